"""A training copy of a video dataset made for random access: every clip re-encoded to H.264
with a short keyframe interval, no B-frames and a smaller short side, in parallel.

A random training clip of a Kinetics file (ffmpeg's defaults: a keyframe every 250 frames,
B-frames) costs on average 125 decoded frames before its span begins; with a keyframe every
``keyframe_interval`` frames it costs at most that many. Every frame is kept at its time, so
clip sampling is unchanged; the re-encode costs image quality, which the report measures
(PSNR of the copy against the original, both scaled as training sees them), with the decode
speed of random training clips from both and the sizes.

The copy is itself a dataset root in the list-file layout: ``<split>.txt`` (path relative to the
root and label index per clip), ``labels.txt``, the files under ``<split>/<class>/``, and
``bad_files.txt`` for source clips that could not be read (named, skipped, as training does).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from vidaccel_train.data.check import file_progress, process_pool, write_labels_and_bad_files
from vidaccel_train.data.clips import ClipContract
from vidaccel_train.data.layouts import index_splits
from vidaccel_train.data.video_io import EncodeSettings, read_clip, transcode
from vidaccel_train.errors import VideoDecodeError

REPORT_FILE = "prepare_report.json"


def _transcode_job(args: tuple[str, str, EncodeSettings]) -> str | None:
    source, target, settings = args
    try:
        transcode(source, target, settings)
    except VideoDecodeError as err:
        return str(err).removeprefix(f"{source}: ")
    return None


def _target_names(samples: Sequence[tuple[str, int]], split: str, class_names: list[str]) -> list[str]:
    """``<split>/<class>/<stem>.mp4`` for each sample, numbered where two stems would collide."""
    taken: set[str] = set()
    names = []
    for path, label in samples:
        stem, name, n = Path(path).stem, None, 0
        while name is None or name in taken:
            name = f"{split}/{class_names[label]}/{stem if n == 0 else f'{stem}_{n}'}.mp4"
            n += 1
        taken.add(name)
        names.append(name)
    return names


def _random_clip_reads(
    paths: Sequence[str], clip: ClipContract, starts: Sequence[float]
) -> tuple[float, list[torch.Tensor]]:
    """Seconds per random training clip (one decoder thread, as loader workers decode) and the clips."""
    clips = []
    began = time.perf_counter()
    for path, fraction in zip(paths, starts):
        frames, _ = read_clip(path, lambda info, f=fraction: clip.timestamps(clip.start_at(info, f)), threads=1)
        clips.append(frames)
    return (time.perf_counter() - began) / max(1, len(paths)), clips


def _psnr_as_trained(original: torch.Tensor, copy: torch.Tensor, short_side: int) -> float:
    """PSNR (dB) of ``copy`` against ``original`` (uint8 ``(T, 3, H, W)``), both resized to the
    short side training resizes to, so that the copy's smaller size does not count as loss."""

    def scaled(frames):
        height, width = frames.shape[-2:]
        size = (round(height * short_side / min(height, width)), round(width * short_side / min(height, width)))
        return torch.nn.functional.interpolate(frames.float(), size=size, mode="bilinear", antialias=True)

    mse = torch.mean((scaled(original) - scaled(copy)) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def measure(pairs: Sequence[tuple[str, str]], clip: ClipContract, psnr_short_side: int, seed: int = 0) -> dict:
    """Random training clips from originals and copies (the same starts), timed, and compared."""
    rng = random.Random(seed)
    starts = [rng.random() for _ in pairs]
    originals, copies = [p for p, _ in pairs], [c for _, c in pairs]
    _random_clip_reads(originals[:1] + copies[:1], clip, starts[:2])  # warm the file cache and codecs
    original_s, original_clips = _random_clip_reads(originals, clip, starts)
    copy_s, copy_clips = _random_clip_reads(copies, clip, starts)
    psnr = [_psnr_as_trained(a, b, psnr_short_side) for a, b in zip(original_clips, copy_clips)]
    return {
        "videos": len(pairs),
        "clip": {"num_frames": clip.num_frames, "sampling_rate": clip.sampling_rate, "target_fps": clip.target_fps},
        "original_clips_per_s": 1 / original_s,
        "copy_clips_per_s": 1 / copy_s,
        "speedup": original_s / copy_s,
        "psnr_db_mean": sum(psnr) / len(psnr) if psnr else math.nan,
        "psnr_db_min": min(psnr) if psnr else math.nan,
        "psnr_at_short_side": psnr_short_side,
    }


def prepare_dataset(
    root: str | Path,
    out_dir: str | Path,
    splits: Sequence[str] = ("train", "val", "test"),
    layout: str = "auto",
    settings: EncodeSettings = EncodeSettings(),
    workers: int = 4,
    measure_videos: int = 32,
    clip: ClipContract | None = None,
    psnr_short_side: int | None = None,
) -> dict:
    """Write the training copy of ``root`` to ``out_dir`` and return (and write) its report.

    The decode speed and PSNR are measured on ``measure_videos`` train videos with random
    ``clip``s scaled to the short side ``psnr_short_side`` (both required when ``measure_videos`` > 0: a zoo entry's
    clip contract, as ``python -m vidaccel_train.data.prepare --model`` passes it).
    """
    if measure_videos and (clip is None or psnr_short_side is None):
        raise ValueError("prepare_dataset: measuring needs the clip and short side of a model (a zoo entry's contract)")
    out_dir = Path(out_dir)
    indexes, class_names = index_splits(root, splits, layout)  # a wrong root fails before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    bad = {path: why for index in indexes.values() for path, why in index.missing.items()}
    report = {"root": str(Path(root).resolve()), "settings": vars(settings) | {"bframes": 0}, "splits": {}}
    pairs: list[tuple[str, str]] = []
    started = time.perf_counter()
    with process_pool(workers) as pool, file_progress() as progress:
        for split, index in indexes.items():
            task = progress.add_task(f"re-encoding {split}", total=len(index.samples))
            names = _target_names(index.samples, split, class_names)
            jobs = [(path, str(out_dir / name), settings) for (path, _), name in zip(index.samples, names)]
            lines, bytes_in, bytes_out = [], 0, 0
            for (path, label), name, reason in zip(index.samples, names, pool.map(_transcode_job, jobs, chunksize=2)):
                progress.advance(task)
                if reason is not None:
                    bad[path] = reason
                    continue
                lines.append(f"{name} {label}\n")
                bytes_in += Path(path).stat().st_size
                bytes_out += (out_dir / name).stat().st_size
                if split == splits[0]:
                    pairs.append((path, str(out_dir / name)))
            (out_dir / f"{split}.txt").write_text("".join(lines))
            report["splits"][split] = {
                "videos": len(lines),
                "bad": len(index.samples) - len(lines),
                "missing": len(index.missing),
                "original_mb": bytes_in / 1e6,
                "copy_mb": bytes_out / 1e6,
            }
    report["encode_s"] = time.perf_counter() - started
    write_labels_and_bad_files(out_dir, class_names, bad)
    sample = random.Random(0).sample(pairs, min(measure_videos, len(pairs)))
    report["random_clips"] = measure(sample, clip, psnr_short_side) if sample else None
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


# ---------------------------------------------------------------------------------- command line

USAGE = """Write a training copy of a video dataset made for random access, and report what it buys.

    python -m vidaccel_train.data.prepare /data/kinetics400 /data/k400_train_copy --workers 16 \\
        [--splits train val test] [--short-side 256] [--keyframe-interval 16] [--crf 23]

Every clip is re-encoded (H.264, a keyframe every --keyframe-interval frames, no B-frames, short
side --short-side, audio dropped) into a dataset root to train from (data.root=<out>
data.layout=list_file). The report (printed, and prepare_report.json in the copy) gives the
sizes, the time taken, and on a sample of train videos the random-clip decode speed of original
and copy (one decoder thread, X3D-XS clips unless --model) and the copy's PSNR against the
original as training sees them. Unreadable source clips are listed in bad_files.txt and left
out. Exits 1 when a split has no readable clip, 2 on a usage or dataset error (one error: line).
"""


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os

    from vidaccel_train.cli import ArgumentParser, run_command
    from vidaccel_train.data.layouts import LAYOUTS

    parser = ArgumentParser("python -m vidaccel_train.data.prepare", USAGE)
    parser.add_argument("root", help="the dataset root, in any layout data.layout accepts")
    parser.add_argument("out", help="folder for the copy (a dataset root) and its report")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    parser.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--short-side", type=int, default=EncodeSettings.short_side, help="pixels; never upscaled")
    parser.add_argument("--keyframe-interval", type=int, default=EncodeSettings.keyframe_interval, help="frames")
    parser.add_argument("--crf", type=int, default=EncodeSettings.crf, help="x264 quality (lower: better, larger)")
    from vidaccel_train.models.zoo import list_models, zoo_entry  # a zoo entry's clip shape (the command's level)

    parser.add_argument(
        "--model", default="x3d_xs", choices=list_models(), help="whose clip shape the speed and PSNR are measured on"
    )
    parser.add_argument(
        "--psnr-short-side",
        type=int,
        default=None,
        help="both videos are scaled to this short side for the PSNR (default: the model's eval short side)",
    )
    parser.add_argument("--measure-videos", type=int, default=32, help="train videos in the speed and PSNR check")
    args: argparse.Namespace = parser.parse_args(argv)

    def command() -> int:
        entry = zoo_entry(args.model)
        settings = EncodeSettings(args.short_side, args.keyframe_interval, args.crf)
        report = prepare_dataset(
            args.root,
            args.out,
            args.splits,
            args.layout,
            settings,
            args.workers,
            args.measure_videos,
            entry.clip,
            args.psnr_short_side or entry.clip.eval_short_side,
        )
        print(json.dumps(report, indent=2))
        print(
            f"training copy in {args.out} (data.root={args.out} data.layout=list_file); "
            f"unreadable source clips in {os.path.join(args.out, 'bad_files.txt')}"
        )
        return 1 if any(s["videos"] == 0 for s in report["splits"].values()) else 0

    return run_command(command)


if __name__ == "__main__":
    raise SystemExit(main())
