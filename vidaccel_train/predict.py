"""Classify videos with an exported artifact, as the run's test scored them.

    python -m vidaccel_train.predict ARTIFACT INPUT [INPUT ...] [--topk 5] [--json] [--csv FILE]
    python -m vidaccel_train.predict ARTIFACT --data-root ROOT --split val   # a labelled split: top-1/top-5, confusion
    python -m vidaccel_train.predict ARTIFACT long.mp4 --timeline [--stride 1.0] [--out DIR]

ARTIFACT is a .pte of an export folder; the manifest beside it says how to decode and
normalise clips, names the classes and records the test views (clips x crops) the export was
verified on, which predict uses unless --views says otherwise: its probabilities for a video
are those of the export's verification. An artifact whose sha256 differs from the manifest's is
refused. An INPUT is a video, a folder (searched recursively for videos, any extension FFmpeg
reads, in any case; hidden files left out) or a list file (.txt/.csv/.lst: one video per line,
optionally followed by its label, a class name or index). Labelled inputs are scored.

--timeline slides one clip over the whole video every --stride seconds and writes, per video,
<stem>.timeline.csv and .json (top-k per window with its start and end) and a .png of the
classes over time into --out, with the overall label (windows' probabilities averaged).

Unreadable videos are named on one line each and the others go on; the exit code is then 1.
A missing or modified artifact, an unknown option or an input without videos: one error line,
exit code 2, before any decoding.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from vidaccel_train.cli import ArgumentParser
from vidaccel_train.data.clips import ClipDataset, ClipSpec, aggregate_views
from vidaccel_train.data.layouts import LAYOUTS, class_name, index_split, videos_under
from vidaccel_train.data.transforms import build_transform
from vidaccel_train.data.video_io import probe, read_clip
from vidaccel_train.errors import (
    USER_ERRORS,
    ArtifactError,
    DatasetLayoutError,
    OutputError,
    PredictError,
    VideoDecodeError,
)
from vidaccel_train.export.executorch import ExecuTorchModel
from vidaccel_train.export.manifest import MANIFEST, sha256_of
from vidaccel_train.files import atomic_path, check_writable, output_errors
from vidaccel_train.quiet import native_stderr_muted

LIST_SUFFIXES = (".txt", ".csv", ".lst")
# The views of manifests written before they recorded the test's: the centre clip, centre crop.
LEGACY_VIEWS = {"clips": 1, "crops": 1}


@dataclass(frozen=True)
class Views:
    """Clips spread evenly over a video times crops along its long side, as ``test`` takes them."""

    clips: int
    crops: int

    @classmethod
    def parse(cls, text: str) -> Views:
        """``"10x3"`` -> 10 clips x 3 crops. Raises :class:`PredictError` for anything else."""
        parts = text.lower().replace(" ", "").split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise PredictError(f"--views takes CLIPSxCROPS with positive numbers, such as 10x3, got {text!r}")
        return cls(int(parts[0]), int(parts[1]))

    def __str__(self) -> str:
        return f"{self.clips} clips x {self.crops} crops"


def load_verified(artifact: str | Path) -> tuple[ExecuTorchModel, dict]:
    """The program and its manifest, after checking the file against the manifest's sha256.

    Raises:
        ArtifactError: the file or its manifest is missing, the file is not listed, or its
            sha256 is not the manifest's.
    """
    artifact = Path(artifact)
    manifest_path = artifact.parent / MANIFEST
    if not artifact.is_file():
        raise ArtifactError(f"{artifact} does not exist")
    if not manifest_path.is_file():
        raise ArtifactError(f"no {MANIFEST} beside {artifact}: predict needs the export folder as written")
    try:
        manifest = json.loads(manifest_path.read_text())
        record = next((a for a in manifest["artifacts"] if a["file"] == artifact.name), None)
    except (ValueError, KeyError, TypeError) as err:
        raise ArtifactError(
            f"{manifest_path} is not a manifest the export wrote ({type(err).__name__}: {err}); "
            "export the checkpoint again"
        ) from err
    if record is None:
        raise ArtifactError(f"{artifact.name} is not listed in {manifest_path}")
    actual = sha256_of(artifact)
    if actual != record["sha256"]:
        raise ArtifactError(
            f"refusing {artifact}: its sha256 {actual[:16]}… is not the manifest's {record['sha256'][:16]}…; "
            "the file was modified or damaged. Export it again (python -m vidaccel_train.export ckpt_path=...)."
        )
    with native_stderr_muted():  # ExecuTorch's CPU probe prints lookups of ARM-only files on load
        program = ExecuTorchModel(artifact)
    return program, manifest


@dataclass
class Prediction:
    """One video's result: class probabilities ``(classes,)`` averaged over its views, or why it
    could not be read. ``label`` is the true class index when the input named one."""

    video: str
    label: int | None = None
    probabilities: torch.Tensor | None = None
    error: str | None = None
    decode_s: float = 0.0
    model_s: float = 0.0

    def top(self, k: int, classes: Sequence[str]) -> list[tuple[str, float]]:
        scores, indices = self.probabilities.topk(min(k, len(classes)))
        return [(classes[i], float(s)) for s, i in zip(scores, indices)]


class _Readable(Dataset):
    """A video's views as ``ClipDataset`` makes them for ``test``, with the error of a file that
    cannot be read instead of an exception, and the seconds the decode took."""

    def __init__(self, dataset: ClipDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        started = time.perf_counter()
        try:
            item = self.dataset.read(index)
        except VideoDecodeError as err:
            path = self.dataset.samples[index][0]
            return {
                "index": index,
                "error": str(err).removeprefix(f"{path}: "),
                "decode_s": time.perf_counter() - started,
            }
        return {"index": index, "video": item["video"], "error": "", "decode_s": time.perf_counter() - started}


def views_dataset(manifest: dict, samples: Sequence[tuple[str, int]], views: Views, transform) -> ClipDataset:
    """``samples``' views as ``test`` reads them for the manifest's model: ``views.clips``
    clips spread over each video, through ``transform`` (the eval transform with
    ``views.crops`` crops), at the manifest's display aspect (``stored`` for manifests written
    before the option existed)."""
    clip = ClipSpec(manifest["num_frames"], manifest["sampling_rate"], manifest["target_fps"])
    return ClipDataset(
        samples,
        clip,
        train=False,
        transform=transform,
        clips_per_video=views.clips,
        display_aspect=manifest.get("display_aspect", "stored"),
    )


def _as_is(item: dict) -> dict:
    return item


class Predictor:
    """An exported artifact with its manifest's input contract, run on videos.

    ``views`` default to the test views the manifest records (``test``'s protocol);
    ``workers`` decode videos in parallel while the program runs in this process.

    Raises:
        ArtifactError: see :func:`load_verified`.
    """

    def __init__(self, artifact: str | Path, views: Views | None = None, workers: int = 0):
        self.program, self.manifest = load_verified(artifact)
        manifest = self.manifest
        try:
            self.classes: list[str] = list(manifest["classes"])
            self.clip = ClipSpec(manifest["num_frames"], manifest["sampling_rate"], manifest["target_fps"])
            self.views = views or Views(**manifest.get("test_views", LEGACY_VIEWS))
            self.display_aspect = manifest.get("display_aspect", "stored")
            self.transform = build_transform(
                False,
                manifest["crop_size"],
                manifest["short_side"],
                manifest["mean"],
                manifest["std"],
                crops=self.views.crops,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(
                f"the manifest beside {artifact} lacks or garbles the input contract ({type(err).__name__}: "
                f"{err}); export the checkpoint again"
            ) from err
        self.workers = workers
        self._warm = False

    def logits(self, views: torch.Tensor) -> torch.Tensor:
        """``(views, C, T, H, W)`` -> ``(views, classes)``: each view alone, as the program was
        exported (batch 1) and as the export verified it."""
        outputs = []
        for view in views:
            if not self._warm:  # the runtime's thread pool starts on the first call
                with native_stderr_muted():
                    outputs.append(self.program(view.unsqueeze(0).contiguous()).reshape(-1))
                self._warm = True
            else:
                outputs.append(self.program(view.unsqueeze(0).contiguous()).reshape(-1))
        return torch.stack(outputs).float()

    def dataset(self, samples: Sequence[tuple[str, int]]) -> ClipDataset:
        return views_dataset(self.manifest, samples, self.views, self.transform)

    def run(self, videos: Sequence[tuple[str, int | None]]) -> Iterator[Prediction]:
        """A :class:`Prediction` per ``(path, label or None)``, in order."""
        dataset = _Readable(self.dataset([(path, -1 if label is None else label) for path, label in videos]))
        workers = min(self.workers, len(videos)) if len(videos) > 1 else 0
        loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_as_is)
        for item in loader:
            path, label = videos[item["index"]]
            if item["error"]:
                yield Prediction(path, label, error=item["error"], decode_s=item["decode_s"])
                continue
            started = time.perf_counter()
            probabilities = aggregate_views(self.logits(item["video"]).unsqueeze(0))[0]
            yield Prediction(
                path, label, probabilities, decode_s=item["decode_s"], model_s=time.perf_counter() - started
            )

    def timeline(self, video: str | Path, stride_s: float, chunk: int = 16) -> Timeline:
        """One clip every ``stride_s`` seconds over the whole video (``views.crops`` crops each),
        read ``chunk`` windows at a time.

        Raises:
            VideoDecodeError: the video cannot be read.
        """
        info = probe(video, self.display_aspect)
        duration = info.duration_s if math.isfinite(info.duration_s) else self.clip.span_s
        last = max(0.0, duration - self.clip.span_s)
        starts = [i * stride_s for i in range(int(last / stride_s + 1e-9) + 1)]
        probabilities = []
        for first in range(0, len(starts), chunk):
            batch = starts[first : first + chunk]
            frames, _ = read_clip(
                video, lambda _: [t for s in batch for t in self.clip.timestamps(s)], display_aspect=self.display_aspect
            )
            for clip in frames.split(self.clip.num_frames):
                views = self.transform(tv_tensors.Video(clip))
                probabilities.append(aggregate_views(self.logits(views).unsqueeze(0))[0])
        return Timeline(str(video), self.classes, starts, self.clip.span_s, torch.stack(probabilities), duration)


@dataclass
class Timeline:
    """Class probabilities ``(windows, classes)`` of clips starting at ``starts`` (seconds from
    the first frame), each ``span_s`` long; ``overall``: their mean."""

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
        """``<name>.timeline.csv``, ``.json`` and ``.png`` in ``out_dir`` (``name``: the video's
        stem by default); returns their paths."""
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
            self._plot(staged[2], topk)
        return paths

    def _plot(self, path: Path, topk: int) -> None:
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


def predict(
    artifact: str | Path, video: str | Path, topk: int = 5, views: Views | None = None
) -> list[tuple[str, float]]:
    """Top-``topk`` (class name, probability) of ``video`` under the manifest's test views.

    Raises:
        ArtifactError: see :func:`load_verified`.
        VideoDecodeError: the video cannot be read.
    """
    predictor = Predictor(artifact, views)
    result = next(predictor.run([(str(video), None)]))
    if result.error:
        raise VideoDecodeError(f"{video}: {result.error}")
    return result.top(topk, predictor.classes)


# ---------------------------------------------------------------------------------- inputs


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


def _read_list(path: Path, classes: Sequence[str]) -> list[tuple[str, int | None]]:
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
            listed = _read_list(path, classes)
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


# ---------------------------------------------------------------------------------- scoring


def score(results: Sequence[Prediction], classes: Sequence[str]) -> dict | None:
    """Top-1, top-5 and mean class accuracy of the labelled, readable ``results`` (as ``test``
    scores averaged views), with the confusion matrix (rows: true class); None without labels."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

    scored = [r for r in results if r.label is not None and r.probabilities is not None]
    if not scored:
        return None
    probabilities = torch.stack([r.probabilities for r in scored])
    labels = torch.tensor([r.label for r in scored])
    count = len(classes)
    return {
        "videos": len(scored),
        "top1": float(MulticlassAccuracy(count, top_k=1)(probabilities, labels)),
        "top5": float(MulticlassAccuracy(count, top_k=min(5, count))(probabilities, labels)),
        "mean_class_accuracy": float(MulticlassAccuracy(count, top_k=1, average="macro")(probabilities, labels)),
        "confusion": MulticlassConfusionMatrix(count)(probabilities, labels).tolist(),
    }


# ---------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("python -m vidaccel_train.predict", __doc__)
    parser.add_argument("artifact", help="a .pte of an export folder (manifest.json beside it)")
    parser.add_argument("inputs", nargs="*", help="videos, folders and list files")
    parser.add_argument("--data-root", help="score a labelled split of a dataset root (any layout data.layout reads)")
    parser.add_argument("--split", default="val", help="the split of --data-root (default: val)")
    parser.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS])
    parser.add_argument("--views", help="CLIPSxCROPS per video (default: the test views in the manifest)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object per video instead of a table")
    parser.add_argument("--csv", help="also write one row per video to this CSV file")
    parser.add_argument("--timeline", action="store_true", help="classify every window of each video over time")
    parser.add_argument("--stride", type=float, help="seconds between timeline windows (default: the clip's span)")
    parser.add_argument("--out", default="timelines", help="folder for the timeline files (default: ./timelines)")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes decoding videos in parallel (default: up to 4)",
    )
    return parser


def _check(args, parser) -> None:
    if args.topk < 1:
        parser.error(f"--topk must be 1 or more, got {args.topk}")
    if args.workers < 0:
        parser.error(f"--workers must be 0 or more, got {args.workers}")
    if args.stride is not None and not args.stride > 0:
        parser.error(f"--stride must be a positive number of seconds, got {args.stride}")
    if not args.inputs and not args.data_root:
        parser.error("name videos, folders or list files, or a --data-root")
    if args.timeline and args.data_root:
        parser.error("--timeline takes videos, not a --data-root")


def _progress(total: int, quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)  # a bar for people at a terminal; nothing in logs and pipes
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet or total <= 3 or not console.is_terminal,
    )


def _print_table(results: Sequence[Prediction], classes: Sequence[str], topk: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, box=None)
    table.add_column("video", overflow="fold")
    table.add_column("prediction")
    table.add_column("score", justify="right")
    if topk > 1:
        table.add_column(f"next {topk - 1}")
    labelled = any(r.label is not None for r in results)
    if labelled:
        table.add_column("label")
    for result in results:
        if result.error:
            table.add_row(result.video, f"error: {result.error}", "", *([""] * (topk > 1)), *([""] * labelled))
            continue
        top = result.top(topk, classes)
        row = [result.video, top[0][0], f"{top[0][1]:.4f}"]
        if topk > 1:
            row.append(", ".join(f"{label} {score:.3f}" for label, score in top[1:]))
        if labelled:
            row.append(
                ""
                if result.label is None
                else ("= " if classes[result.label] == top[0][0] else "≠ ") + classes[result.label]
            )
        table.add_row(*row)
    Console(width=max(100, Console().width)).print(table)


def _record(result: Prediction, classes: Sequence[str], topk: int) -> dict:
    record = {"video": result.video}
    if result.label is not None:
        record["label"] = classes[result.label]
    if result.error:
        record["error"] = result.error
    else:
        record["predictions"] = [{"label": label, "score": score} for label, score in result.top(topk, classes)]
    return record


def _write_csv(path: str, results: Sequence[Prediction], classes: Sequence[str], topk: int) -> None:
    """One row per video into ``path``, whole or not at all (a full disk: :class:`OutputError`)."""
    k = min(topk, len(classes))
    with output_errors(f"--csv {path}"), atomic_path(path) as staged, open(staged, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            ["video", "label", "error", *[f"{kind}{i + 1}" for i in range(k) for kind in ("prediction", "score")]]
        )
        for r in results:
            top = [] if r.error else [v for label, score in r.top(k, classes) for v in (label, f"{score:.6f}")]
            writer.writerow([r.video, "" if r.label is None else classes[r.label], r.error or "", *top])


def _print_scores(scores: dict, classes: Sequence[str], left_out: int) -> None:
    print(
        f"{scores['videos']} labelled videos{f' ({left_out} unreadable, left out)' if left_out else ''}: "
        f"top-1 {scores['top1']:.4f}, top-5 {scores['top5']:.4f}, mean class accuracy {scores['mean_class_accuracy']:.4f}"
    )
    if len(classes) <= 20:
        width = max(len(c) for c in classes)
        print(f"confusion (rows: true class, columns: predicted, in the order {', '.join(classes)}):")
        for name, row in zip(classes, scores["confusion"]):
            print(f"  {name:>{width}}  " + " ".join(f"{n:4d}" for n in row))


def main(argv: list[str] | None = None) -> int:
    from vidaccel_train.quiet import silence_third_party_noise

    silence_third_party_noise()
    parser = _parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    try:
        views = Views.parse(args.views) if args.views else None
        predictor = Predictor(args.artifact, views, args.workers)
        classes = predictor.classes
        videos = collect_inputs(args.inputs, classes)
        if args.data_root:
            videos += split_inputs(args.data_root, args.split, args.layout, classes)
        if args.csv and not Path(args.csv).resolve().parent.is_dir():
            raise PredictError(f"--csv {args.csv}: its folder does not exist")
        if args.csv:
            check_writable(args.csv, "--csv", folder=False)
        if args.timeline:
            check_writable(args.out, "--out folder")
    except (*USER_ERRORS, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if args.timeline:
        return _main_timeline(predictor, videos, args)

    started = time.perf_counter()
    results: list[Prediction] = []
    with _progress(len(videos), quiet=False) as progress:
        task = progress.add_task(f"predicting ({predictor.views})", total=len(videos))
        for result in predictor.run(videos):
            results.append(result)
            progress.advance(task)
            if args.json:
                print(json.dumps(_record(result, classes, args.topk)), flush=True)
    if not args.json:
        _print_table(results, classes, args.topk)
    if args.csv:
        try:
            _write_csv(args.csv, results, classes, args.topk)
        except OutputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    bad = [r for r in results if r.error]
    scores = score(results, classes)
    if args.json and scores:
        print(
            json.dumps(
                {"summary": {**scores, "classes": list(classes), "unreadable": sum(r.label is not None for r in bad)}}
            )
        )
    if not args.json:
        if scores:
            _print_scores(scores, classes, sum(r.label is not None for r in bad))
        readable = [r for r in results if not r.error]
        wall = time.perf_counter() - started
        decode = sum(r.decode_s for r in results) / max(1, len(results))
        model = sum(r.model_s for r in readable) / max(1, len(readable))
        workers = min(args.workers, len(videos)) if len(videos) > 1 else 0
        print(
            f"{len(results)} videos in {wall:.1f} s ({predictor.views} each): decode {decode * 1000:.0f} ms a video "
            f"{f'in {workers} worker processes' if workers else 'in this process'}, model {model * 1000:.1f} ms a video"
            + (f"; {len(bad)} unreadable" if bad else "")
            + (f"; rows in {args.csv}" if args.csv else "")
        )
    for result in bad:
        print(f"error: {result.video}: {result.error}", file=sys.stderr)
    return 1 if bad else 0


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


def _main_timeline(predictor: Predictor, videos: Sequence[tuple[str, int | None]], args) -> int:
    stride = args.stride or predictor.clip.span_s
    failed = 0
    for (video, _), name in zip(videos, timeline_names([video for video, _ in videos])):
        try:
            timeline = predictor.timeline(video, stride)
        except VideoDecodeError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        try:
            paths = timeline.write(Path(args.out), args.topk, name)
        except OutputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        best = int(timeline.overall.argmax())
        if args.json:
            print(json.dumps(json.loads(paths[0].read_text())))
        else:
            print(
                f"{video}: {len(timeline.starts)} windows of {timeline.span_s:.2f} s every {stride:.2f} s; overall "
                f"{timeline.classes[best]} {float(timeline.overall[best]):.4f}; {', '.join(str(p) for p in paths)}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
