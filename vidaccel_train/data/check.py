"""Check a video dataset before training on it: every listed file opened and decoded at its
start, middle and end, in parallel, with a progress bar.

Writes a clean index that is itself a dataset root (``data.root=<out> data.layout=list_file``):
``<split>.txt`` (absolute path and label index per readable clip), ``labels.txt``, and
``bad_files.txt`` (``<path>\t<reason>`` for every missing, unreadable or too-short clip), plus
``summary.json`` with the counts.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vidaccel_train.data.layouts import LABELS_FILE, index_splits
from vidaccel_train.data.video_io import VideoDecodeError, probe, read_frames_at

# Where in a video the check decodes a frame, as fractions of its duration.
CHECK_POINTS = (0.0, 0.5, 0.98)


def file_progress() -> Progress:
    """The progress bar of the per-file dataset tools: description, bar, done/total, time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


def write_labels_and_bad_files(out_dir: Path, class_names: list[str], bad: dict[str, str]) -> None:
    """``labels.txt`` (the class order) and ``bad_files.txt`` (``<path>\t<reason>``) of a dataset
    root the tools write."""
    (out_dir / LABELS_FILE).write_text("".join(f"{name}\n" for name in class_names))
    (out_dir / "bad_files.txt").write_text("".join(f"{path}\t{why}\n" for path, why in sorted(bad.items())))


def check_video(path: str, min_duration_s: float = 0.0) -> str | None:
    """``None`` if ``path`` decodes at its start, middle and end; else why not."""
    try:
        info = probe(path)
        duration = info.duration_s if math.isfinite(info.duration_s) else 0.0
        if duration < min_duration_s:
            return f"{duration:.2f} s long, shorter than the {min_duration_s:.2f} s asked for"
        read_frames_at(path, [duration * point for point in CHECK_POINTS])
    except VideoDecodeError as err:
        return str(err).removeprefix(f"{path}: ")
    return None


def _check(args: tuple[str, float]) -> str | None:
    return check_video(*args)


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
    out_dir.mkdir(parents=True, exist_ok=True)
    indexes, class_names = index_splits(root, splits, layout)
    bad: dict[str, str] = {path: why for index in indexes.values() for path, why in index.missing.items()}
    summary = {"root": str(Path(root).resolve()), "classes": len(class_names), "splits": {}}
    with ProcessPoolExecutor(max(1, workers)) as pool, file_progress() as progress:
        for split, index in indexes.items():
            task = progress.add_task(f"checking {split}", total=len(index.samples))
            jobs = [(path, min_duration_s) for path, _ in index.samples]
            good = []
            for (path, label), reason in zip(index.samples, pool.map(_check, jobs, chunksize=8)):
                progress.advance(task)
                if reason is None:
                    good.append(f"{Path(path).resolve()} {label}\n")
                else:
                    bad[path] = reason
            (out_dir / f"{split}.txt").write_text("".join(good))
            summary["splits"][split] = {"readable": len(good), "bad": len(index.samples) - len(good), "missing": len(index.missing)}
    write_labels_and_bad_files(out_dir, class_names, bad)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
