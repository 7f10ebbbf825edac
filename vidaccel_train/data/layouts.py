"""Dataset layouts: where the clips of a split are and which class each one is.

Three layouts, as Kinetics is found on disk:

- ``class_folders``: ``<root>/<split>/<class name>/<clip>.<ext>``.
- ``annotations``: the official CSVs (``label,youtube_id,time_start,time_end,split``) as
  ``<root>/[annotations/]<split>.csv``, with clips named
  ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` anywhere under ``<root>/<split>/`` (else under
  ``<root>``).
- ``list_file``: PyTorchVideo's ``<path> <label index>`` lines in ``<root>/<split>.txt`` (or
  ``.csv``), paths relative to the root or absolute.

Class indices come from ``labels.txt`` in the root when present, else from the train split's
annotations or folders (sorted names), so every split and every checkpoint agree on them. Class
names are compared in Unicode normal form C: a folder named on a Mac (NFD) matches a labels file
typed elsewhere. Linked folders (a dataset on another disk linked in) are followed, loops once.
"""

from __future__ import annotations

import csv
import logging
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vidaccel_train.errors import DatasetLayoutError

log = logging.getLogger(__name__)

# Every container FFmpeg reads that people keep video in, matched in any case: phone and camera
# exports (.m4v, .3gp, .MTS AVCHD), broadcast and streaming segments (.ts, .m2ts), browser
# recordings (.webm), older formats (.flv, .wmv, .mpg, .vob), IVF (VP8/VP9/AV1). Raw elementary
# streams (.h264, .hevc, .m2v) are left out: they carry no timestamps to sample by.
VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".qt",
    ".mkv",
    ".webm",
    ".avi",
    ".flv",
    ".f4v",
    ".wmv",
    ".asf",
    ".mpg",
    ".mpeg",
    ".mpe",
    ".vob",
    ".ts",
    ".m2ts",
    ".mts",
    ".m2t",
    ".3gp",
    ".3g2",
    ".ogv",
    ".ogg",
    ".mxf",
    ".dv",
    ".nut",
    ".ivf",
    ".rm",
    ".rmvb",
    ".divx",
)
# Left out wherever a dataset is indexed: dot names (.DS_Store, macOS's ._<name> AppleDouble
# sidecars, .ipynb_checkpoints, .git) and the __MACOSX folder of zips made on a Mac.
HIDDEN_FOLDERS = ("__MACOSX",)
LABELS_FILE = "labels.txt"
LAYOUTS = ("class_folders", "annotations", "list_file")
# The names a split goes by in the wild (Kinetics calls its validation split "validate").
SPLIT_ALIASES = {"val": ("val", "validate", "validation"), "validate": ("validate", "val", "validation")}

EXPECTED_LAYOUTS = (
    "expected one of: <root>/<split>/<class name>/<clip>.mp4 (class folders); "
    "<root>/[annotations/]<split>.csv with label,youtube_id,time_start,time_end rows and clips named "
    "<youtube_id>_<start:06d>_<end:06d>.mp4 (Kinetics annotations); or <root>/<split>.txt with "
    "'<path> <label index>' lines (PyTorchVideo list files)"
)


def is_hidden(path: Path, below: Path | None = None) -> bool:
    """Whether ``path`` (or a folder between ``below`` and it) is hidden: a dot name or ``__MACOSX``."""
    parts = path.relative_to(below).parts if below is not None else (path.name,)
    return any(part.startswith(".") or part in HIDDEN_FOLDERS for part in parts)


def is_video_file(path: Path) -> bool:
    """A visible file with one of :data:`VIDEO_EXTENSIONS` (any case)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS and not is_hidden(path)


def class_name(name: str) -> str:
    """A class name as this project compares and stores it: Unicode normal form C, so ``à``
    typed on Linux or Windows and ``à`` from a Mac's folder names (``a`` + combining accent) match."""
    return unicodedata.normalize("NFC", name)


def files_under(folder: Path) -> Iterator[Path]:
    """Every visible file in ``folder`` and below it, following linked folders (a link back to a
    folder already being walked is skipped with a warning, not followed round); hidden files and
    folders left out. Paths keep the links in them, in no particular order."""
    folder = Path(folder)
    seen: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        stat = os.stat(top)
        if (stat.st_dev, stat.st_ino) in seen:
            log.warning("%s links back to %s: not followed again", top, os.path.realpath(top))
            dirs.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = [d for d in dirs if not is_hidden(Path(d))]
        for name in files:
            path = Path(top, name)
            if not is_hidden(path) and path.is_file():
                yield path


def videos_under(folder: Path) -> list[Path]:
    """Every video file in ``folder`` and below it, sorted, linked folders followed
    (:func:`files_under`); hidden files and folders left out."""
    return sorted(p for p in files_under(folder) if is_video_file(p))


def _read_text(path: Path) -> str:
    """A text file as spreadsheets and editors save it: with or without a UTF-8 byte-order mark."""
    return path.read_text(encoding="utf-8-sig")


@dataclass
class SplitIndex:
    """The readable samples of a split, and the rows that named a file that is not there."""

    samples: list[tuple[str, int]]
    class_names: list[str]
    missing: dict[str, str] = field(default_factory=dict)  # path or clip name -> why
    ignored: list[str] = field(default_factory=list)  # visible files in class folders that are not videos by extension


def read_class_names(root: Path) -> list[str] | None:
    labels = Path(root) / LABELS_FILE
    if not labels.is_file():
        return None
    return [class_name(line.strip()) for line in _read_text(labels).splitlines() if line.strip()]


def index_split(root: str | Path, split: str, layout: str = "auto", class_names: list[str] | None = None) -> SplitIndex:
    """Index one split of ``root`` in ``layout`` (``auto`` detects it)."""
    root = Path(root)
    layout = detect_layout(root, split) if layout == "auto" else layout
    names = [class_name(name) for name in class_names] if class_names else read_class_names(root)
    if layout == "class_folders":
        return _index_class_folders(root, split, names)
    if layout == "annotations":
        return _index_annotations(root, split, names)
    if layout == "list_file":
        return _index_list_file(root, split, names)
    raise DatasetLayoutError(f"unknown data.layout={layout!r}; choose one of auto, {', '.join(LAYOUTS)}")


def index_splits(root: str | Path, splits, layout: str = "auto") -> tuple[dict[str, SplitIndex], list[str]]:
    """Every split of ``root`` indexed with the same class names (the first split's), and those names."""
    indexes: dict[str, SplitIndex] = {}
    class_names = None
    for split in splits:
        indexes[split] = index_split(root, split, layout, class_names)
        class_names = indexes[split].class_names
    return indexes, class_names


def detect_layout(root: Path, split: str) -> str:
    if not Path(root).is_dir():
        raise DatasetLayoutError(f"{root}: no such folder (the dataset root holds its splits: {EXPECTED_LAYOUTS})")
    csv_file = _find_split_file(root, split, (".csv",))
    if csv_file is not None:
        return "annotations" if _is_annotation_csv(csv_file) else "list_file"
    if _find_split_file(root, split, (".txt",)) is not None:
        return "list_file"
    folder = _find_split_dir(root, split)
    if folder is not None and _class_folders(folder):
        return "class_folders"
    raise DatasetLayoutError(f"{root}: cannot tell the layout of split '{split}'; {EXPECTED_LAYOUTS}")


def _aliases(split: str) -> tuple[str, ...]:
    return SPLIT_ALIASES.get(split, (split,))


def _find_split_file(root: Path, split: str, suffixes: tuple[str, ...]) -> Path | None:
    for folder in (root / "annotations", root):
        for name in _aliases(split):
            for suffix in suffixes:
                if (folder / f"{name}{suffix}").is_file():
                    return folder / f"{name}{suffix}"
    return None


def _find_split_dir(root: Path, split: str) -> Path | None:
    for name in _aliases(split):
        if (root / name).is_dir():
            return root / name
    return None


def _class_folders(split_dir: Path) -> list[Path]:
    return sorted((p for p in split_dir.iterdir() if p.is_dir() and not is_hidden(p)), key=lambda p: class_name(p.name))


def _is_annotation_csv(path: Path) -> bool:
    with open(path, newline="", encoding="utf-8-sig") as stream:
        header = next(csv.reader(stream), [])
    return "youtube_id" in [column.strip() for column in header]


def _index_class_folders(root: Path, split: str, names: list[str] | None) -> SplitIndex:
    split_dir = _find_split_dir(root, split)
    if split_dir is None:
        raise DatasetLayoutError(
            f"no '{split}' split under {root}; {EXPECTED_LAYOUTS} (or run on the generated data with data=synthetic)"
        )
    names = (
        names or _train_class_names(root, "class_folders") or [class_name(p.name) for p in _class_folders(split_dir)]
    )
    index = {class_name(name): i for i, name in enumerate(names)}
    samples: list[tuple[str, int]] = []
    ignored: list[str] = []
    for folder in _class_folders(split_dir):
        if class_name(folder.name) not in index:
            raise DatasetLayoutError(f"{folder}: class '{folder.name}' is not in the class list of {root}")
        for clip in sorted(folder.iterdir()):
            if is_hidden(clip):
                continue
            if clip.is_file() and is_video_file(clip):
                samples.append((str(clip), index[class_name(folder.name)]))
            else:
                ignored.append(str(clip))
    if not samples:
        raise DatasetLayoutError(
            f"{split_dir}: no video files in class folders (by extension: .mp4, .mkv, .webm, .mov, "
            f".avi and {len(VIDEO_EXTENSIONS) - 5} more, in any case)"
        )
    if ignored:
        log.warning(
            "%d entries of %s are not video files by their extension and were left out (%s%s)",
            len(ignored),
            split_dir,
            ", ".join(Path(p).name for p in ignored[:5]),
            ", ..." if len(ignored) > 5 else "",
        )
    return SplitIndex(samples, names, ignored=ignored)


def _read_annotations(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as stream:
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(stream)]
    for row in rows:
        if "label" in row:
            row["label"] = class_name(row["label"])
    if rows and not {"youtube_id", "time_start", "time_end"} <= rows[0].keys():
        raise DatasetLayoutError(f"{path}: needs the columns youtube_id,time_start,time_end (and label)")
    return rows


def clip_stem(row: dict[str, str]) -> str:
    """Kinetics' clip name: ``<youtube_id>_<start:06d>_<end:06d>``."""
    return f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"


def _index_annotations(root: Path, split: str, names: list[str] | None) -> SplitIndex:
    path = _find_split_file(root, split, (".csv",))
    if path is None:
        raise DatasetLayoutError(
            f"no annotation file for split '{split}' under {root} or {root / 'annotations'}; {EXPECTED_LAYOUTS}"
        )
    rows = _read_annotations(path)
    if rows and not rows[0].get("label"):
        raise DatasetLayoutError(
            f"{path} has no labels (Kinetics' unlabelled test list); use a labelled split such as validate"
        )
    names = names or _train_class_names(root, "annotations") or sorted({row["label"] for row in rows})
    index = {class_name(name): i for i, name in enumerate(names)}
    clips_dir = _find_split_dir(root, split) or root
    on_disk = {p.stem: p for p in videos_under(clips_dir)}
    samples, missing = [], {}
    for row in rows:
        if row["label"] not in index:
            raise DatasetLayoutError(f"{path}: label '{row['label']}' is not in the class list of {root}")
        stem = clip_stem(row)
        if stem in on_disk:
            samples.append((str(on_disk[stem]), index[row["label"]]))
        else:
            missing[str(clips_dir / stem)] = f"listed in {path.name} but no such clip under {clips_dir}"
    if not samples:
        raise DatasetLayoutError(f"{path}: none of its {len(rows)} clips were found under {clips_dir}")
    return SplitIndex(samples, names, missing)


def _index_list_file(root: Path, split: str, names: list[str] | None) -> SplitIndex:
    path = _find_split_file(root, split, (".txt", ".csv"))
    if path is None:
        raise DatasetLayoutError(f"no list file for split '{split}' under {root}; {EXPECTED_LAYOUTS}")
    entries = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetLayoutError(f"{path}:{number}: expected '<path> <label index>', got {line!r}")
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise DatasetLayoutError(f"{path} lists no clips")
    highest = max(label for _, label in entries)
    names = names or [str(i) for i in range(highest + 1)]
    if highest >= len(names) or min(label for _, label in entries) < 0:
        raise DatasetLayoutError(f"{path}: label indices go up to {highest} but there are {len(names)} class names")
    samples, missing = [], {}
    for clip, label in entries:
        clip_path = Path(clip) if Path(clip).is_absolute() else root / clip
        if clip_path.is_file():
            samples.append((str(clip_path), label))
        else:
            missing[str(clip_path)] = f"listed in {path.name} but missing"
    if not samples:
        raise DatasetLayoutError(f"{path}: none of its {len(entries)} clips exist")
    return SplitIndex(samples, names, missing)


def _train_class_names(root: Path, layout: str) -> list[str] | None:
    """The class list as the train split defines it, so val/test indices match training."""
    if layout == "class_folders":
        folder = _find_split_dir(root, "train")
        return [class_name(p.name) for p in _class_folders(folder)] if folder else None
    path = _find_split_file(root, "train", (".csv",))
    if path is None:
        return None
    return sorted({row["label"] for row in _read_annotations(path) if row.get("label")}) or None
