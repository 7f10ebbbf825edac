"""What ``predict`` runs on: videos, folders (recursively) and list files named on the command
line, or a labelled split of a dataset root, each as ``(video path, label index or None)``."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from vidaccel_train.data.layouts import class_name, index_split, videos_under
from vidaccel_train.errors import DatasetLayoutError, PredictError

LIST_SUFFIXES = (".txt", ".csv", ".lst")


def _class_index(text: str, classes: Sequence[str], where: str) -> int:
    names = [class_name(c) for c in classes]  # compared in one Unicode normal form
    if class_name(text) in names:
        return names.index(class_name(text))
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(classes):
        return int(text)
    raise PredictError(
        f"{where}: label {text!r} is neither one of the model's {len(classes)} classes nor an index below {len(classes)}"
    )


def _split_label(fields: list[str], classes: Sequence[str]) -> tuple[str, str | None]:
    """A line's fields as (path, label): the longest run of trailing fields that names a class
    (Kinetics' names have spaces) or is a class index; no label if none does."""
    for cut in range(1, len(fields)):
        label = " ".join(fields[cut:])
        if class_name(label) in map(class_name, classes) or (label.isdigit() and int(label) < len(classes)):
            return " ".join(fields[:cut]), label
    return " ".join(fields), None


def read_list(path: Path, classes: Sequence[str]) -> list[tuple[str, int | None]]:
    """``path [label]`` lines (label: a class name, spaces allowed, or an index; a ``.csv``
    is read as CSV, a header row skipped); relative paths are relative to the list's folder;
    blank lines and ``#`` comments skipped."""

    def located(name: str) -> Path:
        return Path(name) if Path(name).is_absolute() else path.parent / name

    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = [[field.strip() for field in row] for row in csv.reader(text.splitlines())]
    else:
        rows = [line.split() for line in text.splitlines()]
    videos = []
    for number, fields in enumerate(rows, 1):
        fields = [f for f in fields if f]
        if not fields or fields[0].startswith("#"):
            continue
        whole = " ".join(fields)
        if located(whole).exists() or len(fields) == 1:
            videos.append((str(located(whole)), None))
            continue
        name, label = (fields[0], fields[1]) if path.suffix.lower() == ".csv" else _split_label(fields, classes)
        if (
            number == 1
            and not located(name).exists()
            and (label is None or class_name(label) not in map(class_name, classes) and not label.isdigit())
        ):
            continue  # a header row (path,label)
        videos.append((str(located(name)), None if label is None else _class_index(label, classes, f"{path}:{number}")))
    return videos


def collect_inputs(inputs: Sequence[str], classes: Sequence[str]) -> list[tuple[str, int | None]]:
    """``(video path, label index or None)`` for every input: videos, folders (recursively),
    list files. Raises :class:`PredictError` for an input that does not exist or holds no video."""
    videos: list[tuple[str, int | None]] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = videos_under(path)
            if not found:
                raise PredictError(f"{path}: no video files in this folder or below it")
            videos += [(str(p), None) for p in found]
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            listed = read_list(path, classes)
            if not listed:
                raise PredictError(f"{path}: the list names no video")
            videos += listed
        elif path.is_file():
            videos.append((str(path), None))
        else:
            raise PredictError(f"{path}: no such file or folder")
    return videos


def split_inputs(root: str, split: str, layout: str, classes: Sequence[str]) -> list[tuple[str, int]]:
    """The labelled videos of ``split`` under ``root``, with the model's class indices."""
    try:
        index = index_split(root, split, layout)
    except DatasetLayoutError as err:
        raise PredictError(str(err)) from err
    unknown = sorted(set(index.class_names) - set(classes))
    if unknown:
        raise PredictError(f"{root}: classes {', '.join(unknown[:8])} are not among the model's {len(classes)} classes")
    return [(path, classes.index(index.class_names[label])) for path, label in index.samples]
