"""Training clips per second: this project's data pipeline against stock
``pytorchvideo.data.Kinetics`` on the same files, same transform, workers and batch, in one run.

    python scripts/bench_data.py [--root /data/kinetics/train_root] [--model x3d_xs] [--workers 2]

Without ``--root`` a generated dataset of longer, larger clips (6 s, 320x240, 30 fps) is made
once under ``data/bench``. Both pipelines sample one random clip of the model's span per video,
then run the same torchvision v2 train transform (scale, crop, normalise). PyTorchVideo decodes
every frame of the span and subsamples afterwards; ours converts only the frames the clip uses.
Ours is also measured with one decoder thread instead of FFmpeg's choice, with
``--clips-per-video`` clips per decoded video (``data.train_clips_per_video``), and with every
frame decoded (without skipping the non-reference frames that lie well before a wanted one).

With ``--baseline-rev REV`` it measures instead the reader of git revision REV against today's,
alternating rounds in one run (the same files, loader, transform and workers).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from vidaccel_train.data import clips, video_io
from vidaccel_train.data.clips import ClipContract, ClipDataset, EpochShuffleSampler, collate_clips
from vidaccel_train.data.layouts import index_split
from vidaccel_train.data.synthetic import SyntheticSpec, generate_dataset
from vidaccel_train.data.transforms import build_transform
from vidaccel_train.models.zoo import zoo_entry

# The zoo entries' clip contracts (x3d_tiny: the tests' tiny mode).
CLIPS = {name: zoo_entry(name).clip for name in ("x3d_xs", "x3d_s", "x3d_tiny")}
BENCH_SPEC = SyntheticSpec(
    classes=("move_left", "move_right", "rotate_cw", "approach"),
    clips_per_class={"train": 12, "val": 1, "test": 1},
    height=240,
    width=320,
    duration_s=6.0,
)


class StockTransform:
    """What a PyTorchVideo recipe does to a sample: uniform temporal subsample of the decoded
    span, then the same spatial transform as ours."""

    def __init__(self, num_frames: int, transform):
        self.num_frames, self.transform = num_frames, transform

    def __call__(self, sample: dict) -> dict:
        video = sample["video"]  # (C, T_span, H, W) float in [0, 255]
        picks = torch.linspace(0, video.shape[1] - 1, self.num_frames).round().long()
        frames = video[:, picks].permute(1, 0, 2, 3).to(torch.uint8)
        return {"video": self.transform(tv_tensors.Video(frames)), "label": sample["label"]}


def our_train_loader(
    samples,
    clip: ClipContract,
    transform,
    batch_size: int,
    workers: int,
    clips_per_video: int = 1,
    decoder_threads: int = 0,
    **loader_options,
) -> DataLoader:
    """This project's training dataset, sampler and collation, batched by clips for a like-for-like
    clips/s: ``batch_size`` clips from ``batch_size / clips_per_video`` videos (the datamodule
    batches ``data.batch_size`` videos of ``clips_per_video`` clips each)."""
    repeated = clips_per_video > 1
    dataset = ClipDataset(
        samples,
        clip,
        train=True,
        transform=transform,
        decoder_threads=decoder_threads,
        clips_per_video=clips_per_video if repeated else None,
    )
    return DataLoader(
        dataset,
        sampler=EpochShuffleSampler(len(dataset)),
        batch_size=batch_size // clips_per_video,
        collate_fn=collate_clips if repeated else None,
        num_workers=workers,
        persistent_workers=workers > 0,
        **loader_options,
    )


def warmup_batches(loader: DataLoader) -> int:
    """Batches to draw before timing: the first, then every batch the workers may have queued
    ahead (``prefetch_factor`` each) while it was made. Timed earlier, those come for free and
    flatter a pipeline slower than its consumer."""
    return 1 + loader.num_workers * (loader.prefetch_factor or 0)


def clips_per_second(loader: DataLoader, batches: int) -> float:
    """Clips/s over ``batches`` batches after the warm-up (:func:`warmup_batches`), passing over
    the data as often as needed."""

    def forever():
        while True:
            yield from loader

    stream = forever()
    for _ in range(warmup_batches(loader)):  # workers started and warm, their queue drained
        next(stream)
    started, clips = time.perf_counter(), 0
    for _ in range(batches):
        clips += len(next(stream)["video"])
    return clips / (time.perf_counter() - started)


def reader_of_revision(revision: str):
    """``read_clip`` as the git ``revision`` of ``vidaccel_train/data/video_io.py`` had it."""
    source = subprocess.run(
        ["git", "show", f"{revision}:vidaccel_train/data/video_io.py"],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    module = types.ModuleType(f"video_io_{revision}")
    sys.modules[module.__name__] = module  # its dataclasses look their module up
    exec(compile(source, f"{revision}:video_io.py", "exec"), module.__dict__)
    return lambda path, choose, threads=0, display_aspect=None: module.read_clip(path, choose, threads)


def compare_readers(revision: str, rounds: int, measure, clips_per_video: int) -> None:
    """The training pipeline with the reader of ``revision`` and with today's, alternating, in
    one process (workers fork with the reader in place); prints each round and the median ratio."""
    readers = {revision: reader_of_revision(revision), "today": clips.read_clip}
    for count in (1, clips_per_video):
        rates = {name: [] for name in readers}
        for _ in range(rounds):
            for name, reader in readers.items():
                clips.read_clip = reader
                try:
                    rates[name].append(measure(count))
                finally:
                    clips.read_clip = readers["today"]
        ratio = statistics.median(b / a for a, b in zip(rates[revision], rates["today"]))
        print(
            f"  {count} clip(s)/video, 1 decoder thread: reader at {revision} "
            f"{', '.join(f'{r:.1f}' for r in rates[revision])} clips/s; today "
            f"{', '.join(f'{r:.1f}' for r in rates['today'])}; today / {revision} (median of rounds) {ratio:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="a dataset root in any layout (its train split is read)")
    parser.add_argument("--model", choices=sorted(CLIPS), default="x3d_xs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument(
        "--clips-per-video", type=int, default=2, help="clips per decoded video in the repeated-clip variants"
    )
    parser.add_argument(
        "--baseline-rev",
        help="a git revision: its video reader against today's, side by side "
        "(1 decoder thread, 1 and --clips-per-video clips per video, --rounds alternating rounds)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds for --baseline-rev")
    args = parser.parse_args()

    root = args.root or generate_dataset(Path("data/bench"), BENCH_SPEC)
    index = index_split(root, "train")
    contract = CLIPS[args.model]
    clip = contract
    transform = build_transform(True, contract.crop_size, contract.train_short_side)
    loader_args = dict(batch_size=args.batch_size, num_workers=args.workers, persistent_workers=args.workers > 0)

    def ours(clips_per_video: int, decoder_threads: int, skip_non_reference: bool = True) -> float:
        margin = video_io._SKIP_MARGIN_FRAMES
        video_io._SKIP_MARGIN_FRAMES = margin if skip_non_reference else math.inf  # the workers fork with it
        try:
            loader = our_train_loader(
                index.samples, clip, transform, args.batch_size, args.workers, clips_per_video, decoder_threads
            )
            return clips_per_second(loader, args.batches)
        finally:
            video_io._SKIP_MARGIN_FRAMES = margin

    print(
        f"{args.model}: {contract.num_frames} frames every {contract.sampling_rate} ({clip.span_s:.2f} s span), crop {contract.crop_size}, "
        f"{len(index.samples)} videos from {root}, {args.workers} workers, batch {args.batch_size}"
    )
    if args.baseline_rev:
        compare_readers(args.baseline_rev, args.rounds, lambda cpv: ours(cpv, 1), args.clips_per_video)
        return

    variants = {
        "ours, 1 clip/video, 1 thread, every frame decoded": ours(1, 1, skip_non_reference=False),
        "ours, 1 clip/video, FFmpeg threads auto": ours(1, 0),
        "ours, 1 clip/video, 1 decoder thread": ours(1, 1),
        f"ours, {args.clips_per_video} clips/video, FFmpeg threads auto": ours(args.clips_per_video, 0),
        f"ours, {args.clips_per_video} clips/video, 1 decoder thread": ours(args.clips_per_video, 1),
    }

    from pytorchvideo.data import Kinetics, make_clip_sampler
    from pytorchvideo.data.labeled_video_paths import LabeledVideoPaths

    stock = Kinetics(
        data_path=str(root / "train"),
        clip_sampler=make_clip_sampler("random", clip.span_s),
        decoder="pyav",
        decode_audio=False,
        transform=StockTransform(contract.num_frames, transform),
    )
    assert isinstance(stock._labeled_videos, LabeledVideoPaths) and len(stock._labeled_videos) == len(index.samples)
    stock_rate = clips_per_second(DataLoader(stock, **loader_args), args.batches)

    print(f"  {'pytorchvideo.data.Kinetics (PyAV)':45s} {stock_rate:8.1f} clips/s")
    for name, rate in variants.items():
        print(f"  {name:45s} {rate:8.1f} clips/s  {rate / stock_rate:5.2f}x stock")


if __name__ == "__main__":
    main()
