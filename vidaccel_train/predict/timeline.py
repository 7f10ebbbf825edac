"""A video classified over time: one clip every few seconds, its class probabilities per
window, and the files ``predict --timeline`` writes (``.json``, ``.csv``, ``.png``; the demo
page shows the same plot)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vidaccel_train.files import atomic_path, output_errors


@dataclass
class Timeline:
    """Class probabilities ``(windows, classes)`` of clips starting at ``starts`` (seconds from
    the first frame), each ``span_s`` long, of a video ``duration_s`` long; ``overall``: their mean."""

    video: str
    classes: list[str]
    starts: list[float]
    span_s: float
    probabilities: torch.Tensor
    duration_s: float
    overall: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.overall = self.probabilities.mean(0)

    def rows(self, topk: int) -> list[dict]:
        """Per window: ``start_s``, ``end_s`` and the ``topk`` classes with their probabilities."""
        rows = []
        for start, probabilities in zip(self.starts, self.probabilities):
            scores, indices = probabilities.topk(min(topk, len(self.classes)))
            rows.append(
                {
                    "start_s": round(start, 3),
                    "end_s": round(start + self.span_s, 3),
                    "top": [{"label": self.classes[i], "score": round(float(s), 6)} for s, i in zip(scores, indices)],
                }
            )
        return rows

    def write(self, out_dir: Path, topk: int, name: str | None = None) -> list[Path]:
        """``<name>.timeline.json``, ``.csv`` and ``.png`` in ``out_dir`` (``name``: the video's
        stem by default), all three or none; returns their paths.

        Raises:
            OutputError: they cannot be written (a full or read-only disk); none is left.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{name or Path(self.video).stem}.timeline"
        rows = self.rows(topk)
        overall = self.overall.topk(min(topk, len(self.classes)))
        summary = {
            "video": self.video,
            "duration_s": round(self.duration_s, 3),
            "window_s": self.span_s,
            "overall": [{"label": self.classes[i], "score": round(float(s), 6)} for s, i in zip(*overall)],
            "windows": rows,
        }
        paths = [out_dir / f"{stem}.{suffix}" for suffix in ("json", "csv", "png")]
        # All three or none: each is staged beside its place and renamed there when all are written.
        with output_errors(f"the timeline of {self.video}"), ExitStack() as stack:
            staged = [stack.enter_context(atomic_path(path)) for path in paths]
            staged[0].write_text(json.dumps(summary, indent=2))
            with open(staged[1], "w", newline="") as stream:
                writer = csv.writer(stream)
                writer.writerow(
                    [
                        "start_s",
                        "end_s",
                        *[f"{kind}{k + 1}" for k in range(min(topk, len(self.classes))) for kind in ("label", "score")],
                    ]
                )
                for row in rows:
                    writer.writerow(
                        [row["start_s"], row["end_s"], *[v for top in row["top"] for v in (top["label"], top["score"])]]
                    )
            self.plot(staged[2], topk)
        return paths

    def plot(self, path: Path, topk: int) -> None:
        """A PNG at ``path`` of the ``topk`` classes' probabilities over time (window centres, seconds)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = self.overall.topk(min(topk, len(self.classes))).indices.tolist()
        centres = [start + self.span_s / 2 for start in self.starts]
        figure, axes = plt.subplots(figsize=(10, 4))
        for index in shown:
            axes.plot(
                centres,
                self.probabilities[:, index].numpy(),
                marker="o" if len(centres) < 40 else None,
                label=f"{self.classes[index]} ({float(self.overall[index]):.2f})",
            )
        axes.set_xlim(0, max(self.duration_s, self.span_s))
        axes.set_ylim(0, 1)
        axes.set_xlabel("seconds (window centre)")
        axes.set_ylabel("probability")
        best = self.classes[int(self.overall.argmax())]
        axes.set_title(f"{Path(self.video).name}: {len(self.starts)} windows of {self.span_s:.2f} s; overall: {best}")
        axes.legend(loc="best", fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=100, format="png")
        plt.close(figure)


def timeline_names(videos: Sequence[str]) -> list[str]:
    """A distinct name per video for its timeline files: its stem, or ``<stem>_2``, ``_3``, ...
    for a later video with the same stem, never a name another video's stem already has
    (``a/clip.mp4``, ``b/clip.mp4`` and ``clip_2.mp4``: ``clip``, ``clip_3``, ``clip_2``)."""
    stems = [Path(video).stem for video in videos]
    reserved, names = set(stems), []
    for stem in stems:
        name, number = stem, 1
        while name in names or (name != stem and name in reserved):
            number += 1
            name = f"{stem}_{number}"
        names.append(name)
    return names
