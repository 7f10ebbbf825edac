"""Pictures and tables a run leaves next to its metrics."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch

# Past this many classes tick labels overlap: the picture shows the pattern, the CSV the names.
MAX_LABELLED_CLASSES = 40


def write_confusion_matrix(matrix: torch.Tensor, class_names: Sequence[str], stem: Path) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` (counts, rows = true class) and ``<stem>.png`` (row-normalised)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    counts = matrix.long().tolist()
    table = stem.with_suffix(".csv")
    with open(table, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["true \\ predicted", *class_names])
        writer.writerows([name, *row] for name, row in zip(class_names, counts))

    rates = matrix.float() / matrix.sum(1, keepdim=True).clamp(min=1)
    size = min(16.0, 3 + 0.35 * len(class_names))
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, label="fraction of the true class")
    if len(class_names) <= MAX_LABELLED_CLASSES:
        ticks = range(len(class_names))
        axes.set_xticks(ticks, class_names, rotation=60, ha="right", fontsize=8)
        axes.set_yticks(ticks, class_names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    accuracy = matrix.diagonal().sum() / matrix.sum().clamp(min=1)
    axes.set_title(f"{stem.name}: {int(matrix.sum())} videos, top-1 {accuracy:.3f}")
    figure.tight_layout()
    picture = stem.with_suffix(".png")
    figure.savefig(picture, dpi=110)
    plt.close(figure)
    return table, picture
