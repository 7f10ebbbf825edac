"""Dataset layouts: where the clips of a split are and which class each one is."""

from __future__ import annotations

from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")
LABELS_FILE = "labels.txt"


class DatasetLayoutError(ValueError):
    """The data root does not hold a dataset in the expected layout."""


def read_class_names(root: Path) -> list[str] | None:
    labels = root / LABELS_FILE
    if not labels.is_file():
        return None
    return [line.strip() for line in labels.read_text().splitlines() if line.strip()]


def index_class_folders(root: str | Path, split: str, class_names: list[str] | None = None):
    """Index ``<root>/<split>/<class name>/<clip>.<ext>``.

    Class indices follow ``labels.txt`` in ``root`` when present, else the sorted folder names
    of the split. Returns ``(samples, class_names)`` with samples as ``(path, label)``.
    """
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetLayoutError(
            f"no '{split}' split under {root}: expected <root>/{split}/<class name>/<clip>.mp4 "
            "(or run on the generated data with data=synthetic)"
        )
    names = class_names or read_class_names(root) or sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    index = {name: i for i, name in enumerate(names)}
    samples: list[tuple[str, int]] = []
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if folder.name not in index:
            raise DatasetLayoutError(f"{folder}: class '{folder.name}' is not in the class list of {root}")
        for clip in sorted(folder.iterdir()):
            if clip.suffix.lower() in VIDEO_EXTENSIONS:
                samples.append((str(clip), index[folder.name]))
    if not samples:
        raise DatasetLayoutError(f"{split_dir}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in class folders")
    return samples, names
