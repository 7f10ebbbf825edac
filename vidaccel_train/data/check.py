"""Check a video dataset before training on it: every listed file opened and decoded at its
start, middle and end, in parallel, with a progress bar.

Writes a clean index that is itself a dataset root (``data.root=<out> data.layout=list_file``):
``<split>.txt`` (absolute path and label index per readable clip), ``labels.txt``, and
``bad_files.txt`` (``<path>\t<reason>`` for every missing, unreadable or too-short clip),
``report.csv`` (per file what the reader found: codec (the codec's name, not the decoder's),
size, frame rate (measured from the frames' timestamps where the container's is missing or
wrong, as in browser recordings), duration and where it came from, start offset (of the first
frame shown), rotation, mirror, sample aspect ratio), plus ``summary.json`` with the
counts per split: readable, bad, missing, not video, and how many files are rotated, start at
an offset, have no duration in their header or are anamorphic, and the codecs.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vidaccel_train.data.layouts import LABELS_FILE, index_splits
from vidaccel_train.data.video_io import VideoInfo, probe, read_frames_at
from vidaccel_train.errors import VideoDecodeError

REPORT_FILE = "report.csv"
# Where in a video the check decodes a frame, as fractions of its duration.
CHECK_POINTS = (0.0, 0.5, 0.98)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for the per-file dataset tools, spawned: a forked child would inherit the
    caller's thread pools (torch, ExecuTorch) mid-use and can hang."""
    return ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn"))


def file_progress() -> Progress:
    """The progress bar of the per-file dataset tools: description, bar, done/total, time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


def write_labels_and_bad_files(out_dir: Path, class_names: list[str], bad: dict[str, str]) -> None:
    """``labels.txt`` (the class order) and ``bad_files.txt`` (``<path>\t<reason>``) of a dataset
    root the tools write."""
    (out_dir / LABELS_FILE).write_text("".join(f"{name}\n" for name in class_names))
    (out_dir / "bad_files.txt").write_text("".join(f"{path}\t{why}\n" for path, why in sorted(bad.items())))


# The columns of report.csv: one row per listed file.
REPORT_COLUMNS = (
    "split",
    "path",
    "label",
    "status",
    "reason",
    "codec",
    "width",
    "height",
    "fps",
    "duration_s",
    "duration_source",
    "start_s",
    "rotation",
    "mirrored",
    "sample_aspect",
)


def describe(info: VideoInfo) -> dict:
    """What the reader found in a file, as ``report.csv`` columns (rotation in clockwise
    degrees, start offset in seconds, the sample aspect ratio as a number)."""
    return {
        "codec": info.codec,
        "width": info.width,
        "height": info.height,
        "fps": round(info.fps, 3),
        "duration_s": round(info.duration_s, 3) if math.isfinite(info.duration_s) else "",
        "duration_source": info.duration_source,
        "start_s": round(info.start_s, 3),
        "rotation": info.rotation,
        "mirrored": int(info.orientation.mirrored),
        "sample_aspect": round(info.sample_aspect, 4),
    }


def check_video(path: str, min_duration_s: float = 0.0) -> tuple[str | None, dict]:
    """``(None, what was found)`` if ``path`` decodes at its start, middle and end; else
    ``(why not, what was found before it failed)``."""
    found: dict = {}
    try:
        info = probe(path)
        found = describe(info)
        duration = info.duration_s if math.isfinite(info.duration_s) else 0.0
        if duration < min_duration_s:
            return f"{duration:.2f} s long, shorter than the {min_duration_s:.2f} s asked for", found
        read_frames_at(path, [duration * point for point in CHECK_POINTS])
    except VideoDecodeError as err:
        return str(err).removeprefix(f"{path}: "), found
    return None, found


def _check(args: tuple[str, float]) -> tuple[str | None, dict]:
    return check_video(*args)


def conditions(rows: list[dict]) -> dict:
    """How many readable files of ``rows`` need the reader's care: turned by a display matrix,
    starting at a timestamp other than 0, without a duration in the header, with non-square
    pixels; and the codecs."""
    readable = [row for row in rows if row["status"] == "ok"]
    codecs: dict[str, int] = {}
    for row in readable:
        codecs[row["codec"]] = codecs.get(row["codec"], 0) + 1
    return {
        "rotated": sum(row["rotation"] != 0 or row["mirrored"] == 1 for row in readable),
        "start_offset": sum(abs(row["start_s"]) > 1e-3 for row in readable),
        "no_header_duration": sum(row["duration_source"] != "stream" for row in readable),
        "anamorphic": sum(abs(row["sample_aspect"] - 1) > 1e-3 for row in readable),
        "codecs": dict(sorted(codecs.items(), key=lambda item: -item[1])),
    }


def check_dataset(
    root: str | Path,
    out_dir: str | Path,
    splits: Sequence[str] = ("train", "val", "test"),
    layout: str = "auto",
    workers: int = 4,
    min_duration_s: float = 0.0,
) -> dict:
    """Check every split of ``root`` and write the clean index to ``out_dir``; returns the summary."""
    out_dir = Path(out_dir)
    indexes, class_names = index_splits(root, splits, layout)  # a wrong root fails before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    bad: dict[str, str] = {path: why for index in indexes.values() for path, why in index.missing.items()}
    summary = {"root": str(Path(root).resolve()), "classes": len(class_names), "splits": {}}
    rows: list[dict] = []
    with process_pool(workers) as pool, file_progress() as progress:
        for split, index in indexes.items():
            task = progress.add_task(f"checking {split}", total=len(index.samples))
            jobs = [(path, min_duration_s) for path, _ in index.samples]
            good, split_rows = [], []
            for (path, label), (reason, found) in zip(index.samples, pool.map(_check, jobs, chunksize=8)):
                progress.advance(task)
                row = dict.fromkeys(REPORT_COLUMNS, "") | found
                row.update(
                    split=split,
                    path=path,
                    label=class_names[label],
                    status="ok" if reason is None else "bad",
                    reason=reason or "",
                )
                split_rows.append(row)
                if reason is None:
                    good.append(f"{Path(path).resolve()} {label}\n")
                else:
                    bad[path] = reason
            (out_dir / f"{split}.txt").write_text("".join(good))
            summary["splits"][split] = {
                "readable": len(good),
                "bad": len(index.samples) - len(good),
                "missing": len(index.missing),
                "not_video": len(index.ignored),
                **conditions(split_rows),
            }
            rows += split_rows
    write_labels_and_bad_files(out_dir, class_names, bad)
    with open(out_dir / REPORT_FILE, "w", newline="") as stream:
        writer = csv.DictWriter(stream, REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# ---------------------------------------------------------------------------------- command line

USAGE = """Index and check a Kinetics-style download before training on it.

    python -m vidaccel_train.data.check /data/kinetics400 --out /data/k400_index --workers 8 \\
        [--splits train val] [--layout auto] [--min-duration 1.6]

Opens and decodes every listed clip (start, middle, end) in parallel with a progress bar, then
writes a clean index usable as a dataset root (data.root=<out> data.layout=list_file), the list
of bad files with reasons, per file what the reader found (report.csv: codec, start offset,
rotation, duration and its source, sample aspect ratio) and a summary. Exits 1 when a split has
no readable clip, 2 on a usage or dataset error (one error: line).
"""


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os

    from vidaccel_train.cli import ArgumentParser, run_command
    from vidaccel_train.data.layouts import LAYOUTS

    parser = ArgumentParser("python -m vidaccel_train.data.check", USAGE)
    parser.add_argument("root", help="the dataset root, in any layout data.layout accepts")
    parser.add_argument("--out", required=True, help="folder for the clean index, bad_files.txt and summary.json")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    parser.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--min-duration", type=float, default=0.0, help="seconds; shorter clips count as bad")
    args: argparse.Namespace = parser.parse_args(argv)

    def command() -> int:
        summary = check_dataset(args.root, args.out, args.splits, args.layout, args.workers, args.min_duration)
        print(json.dumps(summary, indent=2))
        for split, counts in summary["splits"].items():
            codecs = ", ".join(f"{codec} {count}" for codec, count in counts["codecs"].items())
            print(
                f"{split}: {counts['readable']} readable, {counts['bad']} bad, {counts['missing']} missing, "
                f"{counts['not_video']} not video; {counts['rotated']} rotated, {counts['start_offset']} start at "
                f"an offset, {counts['no_header_duration']} without a duration in the header, "
                f"{counts['anamorphic']} anamorphic; codecs: {codecs or 'none'}"
            )
        print(
            f"clean index in {args.out}; bad files listed in {os.path.join(args.out, 'bad_files.txt')}; "
            f"per file what was found in {os.path.join(args.out, 'report.csv')}"
        )
        return 1 if any(s["readable"] == 0 for s in summary["splits"].values()) else 0

    return run_command(command)


if __name__ == "__main__":
    raise SystemExit(main())
