"""The library: an exported program with its manifest's clip contract, run on videos as the
run's test scored them (:class:`Predictor`, :func:`predict`), and scores over labelled results."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from vidaccel_train.data.clips import ClipContract, ClipDataset, Views, aggregate_views
from vidaccel_train.data.transforms import build_transform
from vidaccel_train.data.video_io import probe, read_clip
from vidaccel_train.errors import PredictError, VideoDecodeError
from vidaccel_train.export.runtime import load_verified
from vidaccel_train.predict.timeline import Timeline
from vidaccel_train.quiet import native_stderr_muted


def parse_views(text: str) -> Views:
    """``"10x3"`` -> 10 clips x 3 crops.

    Raises:
        PredictError: anything else.
    """
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise PredictError(f"--views takes CLIPSxCROPS with positive numbers, such as 10x3, got {text!r}")
    return Views(int(parts[0]), int(parts[1]))


@dataclass
class Prediction:
    """One video's result: class probabilities ``(classes,)`` averaged over its views, or why it
    could not be read. ``label`` is the true class index when the input named one; seconds
    spent decoding and in the program."""

    video: str
    label: int | None = None
    probabilities: torch.Tensor | None = None
    error: str | None = None
    decode_s: float = 0.0
    model_s: float = 0.0

    def top(self, k: int, classes: Sequence[str]) -> list[tuple[str, float]]:
        """The ``k`` most probable (class name, probability), best first."""
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


def views_dataset(
    clip: ClipContract, display_aspect: str, samples: Sequence[tuple[str, int]], views: Views, transform
) -> ClipDataset:
    """``samples``' views as ``test`` reads them for a model of this ``clip`` contract:
    ``views.clips`` clips spread over each video, through ``transform`` (the eval transform
    with ``views.crops`` crops), with pixels as ``display_aspect`` says."""
    return ClipDataset(
        samples, clip, train=False, transform=transform, clips_per_video=views.clips, display_aspect=display_aspect
    )


def _as_is(item: dict) -> dict:
    return item


class Predictor:
    """An exported program with its manifest's input contract, run on videos.

    ``artifact``: a ``.pte`` of an export folder, or the folder (its int8 program). ``views``
    default to the test views the manifest records (``test``'s protocol); ``workers`` decode
    videos in parallel while the program runs in this process.

    Raises:
        ArtifactError: see :func:`~vidaccel_train.export.runtime.load_verified`.
    """

    def __init__(self, artifact: str | Path, views: Views | None = None, workers: int = 0):
        self.program, self.manifest = load_verified(artifact)
        self.classes: list[str] = list(self.manifest.classes)
        self.clip = self.manifest.clip
        self.views = views or self.manifest.test_views
        self.display_aspect = self.manifest.display_aspect
        self.transform = build_transform(
            False, self.clip.crop_size, self.clip.eval_short_side, self.clip.mean, self.clip.std, crops=self.views.crops
        )
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

    def clip_probabilities(self, frames: torch.Tensor) -> torch.Tensor:
        """One clip's uint8 frames ``(T, 3, H, W)``, upright -> class probabilities ``(classes,)``,
        averaged over ``views.crops`` crops (a timeline's window, a live window)."""
        views = self.transform(tv_tensors.Video(frames))
        return aggregate_views(self.logits(views).unsqueeze(0))[0]

    def dataset(self, samples: Sequence[tuple[str, int]]) -> ClipDataset:
        return views_dataset(self.clip, self.display_aspect, samples, self.views, self.transform)

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
            probabilities += [self.clip_probabilities(clip) for clip in frames.split(self.clip.num_frames)]
        return Timeline(str(video), self.classes, starts, self.clip.span_s, torch.stack(probabilities), duration)


def predict(
    artifact: str | Path, video: str | Path, topk: int = 5, views: Views | None = None
) -> list[tuple[str, float]]:
    """Top-``topk`` (class name, probability) of ``video`` under the manifest's test views.

    Raises:
        ArtifactError: see :func:`~vidaccel_train.export.runtime.load_verified`.
        VideoDecodeError: the video cannot be read.
    """
    predictor = Predictor(artifact, views)
    result = next(predictor.run([(str(video), None)]))
    if result.error:
        raise VideoDecodeError(f"{video}: {result.error}")
    return result.top(topk, predictor.classes)


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
