"""Verification of exported programs: every test view through each program and its reference
(accuracy, agreement, logit error) and latency at batch 1. Takes models, programs and batches."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vidaccel_train.data.clips import aggregate_views


@dataclass(frozen=True)
class Latency:
    """Batch-1 latency of one model, in ms: the lowest of ``rounds`` round medians (``ms``) and
    the range of those medians (``low_ms``-``high_ms``), each round ``runs`` timed calls."""

    ms: float
    low_ms: float
    high_ms: float
    rounds: int
    runs: int

    @property
    def spread(self) -> float:
        """The range of the round medians over the figure: 0.05 is 5%."""
        return (self.high_ms - self.low_ms) / self.ms if self.ms else 0.0


def measure_latency(
    runs: dict[str, Callable[[], object]],
    repeats: int = 20,
    rounds: int = 5,
    min_round_s: float = 0.1,
    warmup: int = 2,
) -> dict[str, Latency]:
    """Time each callable at batch 1 in turns: ``rounds`` rounds, each at least ``repeats`` calls
    and ``min_round_s`` seconds per callable, after ``warmup`` untimed calls and one that sizes
    the rounds.

    The figure is the lowest round median: a burst of other work on the machine (a loader worker
    exiting, another process) raises the rounds it falls in, not the figure, and the range over
    rounds says how steady the machine was. A 0.3 ms program gets a few hundred calls a round, so
    its figure is not a handful of samples. Each round starts after a 20 ms pause, which lets the
    previous callable's worker threads (OpenMP's spin before they sleep) go idle.

    Raises:
        ValueError: ``repeats`` or ``rounds`` below 1.
    """
    if repeats < 1 or rounds < 1:
        raise ValueError(f"repeats and rounds must be at least 1, got {repeats} and {rounds}")
    calls = {}
    for name, run in runs.items():  # warm-up, and how many calls fill a round
        for _ in range(warmup):
            run()
        started = time.perf_counter()
        run()
        once = max(time.perf_counter() - started, 1e-6)
        calls[name] = max(repeats, min(int(min_round_s / once), 50 * repeats))
    medians: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            time.sleep(0.02)
            run()
            times = []
            for _ in range(calls[name]):
                started = time.perf_counter()
                run()
                times.append((time.perf_counter() - started) * 1000)
            medians[name].append(statistics.median(times))
    return {
        name: Latency(min(values), min(values), max(values), rounds, calls[name]) for name, values in medians.items()
    }


def collect_logits(loader, predictors: dict[str, Callable[[torch.Tensor], torch.Tensor]], known=None):
    """Every predictor's logits on every test view, ``(videos, views, classes)``, and the labels.

    In-framework models take a video's views as one batch; programs are exported for batch 1
    and run each view alone. ``known`` logits (from the test that just ran) are taken as they are.
    """
    known = known or {}
    predictors = {name: predict for name, predict in predictors.items() if name not in known}
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in predictors}
    labels = []
    for batch in loader:
        valid = batch.get("valid", torch.ones(len(batch["label"]), dtype=torch.bool))
        for views, label, readable in zip(batch["video"], batch["label"], valid):
            if not readable:  # an unreadable video (named in bad_files.txt): left out, as the test does
                continue
            labels.append(int(label))
            for name, predict in predictors.items():
                if isinstance(predict, nn.Module):
                    out = predict(views)
                else:
                    out = torch.stack([predict(view.unsqueeze(0).contiguous()).reshape(-1) for view in views])
                logits[name].append(out.float())
    if not labels:
        raise RuntimeError("the test split is empty: nothing to verify the artifacts on")
    return {**known, **{name: torch.stack(values) for name, values in logits.items()}}, torch.tensor(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Video-level top-1/top-5 as the test step scores them (views' probabilities averaged)."""
    probabilities = aggregate_views(logits)
    ranked = probabilities.topk(min(5, probabilities.shape[-1]), dim=-1).indices
    return {
        "top1": (ranked[:, 0] == labels).float().mean().item(),
        "top5": (ranked == labels[:, None]).any(-1).float().mean().item(),
    }


def fidelity(artifact: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How closely an artifact's logits follow its reference's, per video and per view."""
    video_same = aggregate_views(artifact).argmax(-1) == aggregate_views(reference).argmax(-1)
    clips, clips_ref = artifact.flatten(0, 1), reference.flatten(0, 1)
    clip_same = clips.argmax(-1) == clips_ref.argmax(-1)
    cosine = torch.nn.functional.cosine_similarity(clips, clips_ref, dim=-1)
    top2 = clips_ref.topk(min(2, clips_ref.shape[-1]), dim=-1).values
    gaps = (top2[:, 0] - top2[:, -1])[~clip_same]
    return {
        "agreement": video_same.float().mean().item(),
        "clip_agreement": clip_same.float().mean().item(),
        "logit_max_abs_error": (clips - clips_ref).abs().max().item(),
        "logit_cosine_min": cosine.min().item(),
        "disagreeing_clips": int((~clip_same).sum()),
        "widest_disagreeing_gap": gaps.max().item() if len(gaps) else 0.0,
    }
