"""An exported program on a live source: a prediction for each window as it happens
(``predict --live``), with the lag it came with, and the session's summary."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from vidaccel_train.data.live import LiveFeed, LiveSource, LiveStats
from vidaccel_train.predict.predictor import Predictor


@dataclass
class LiveWindow:
    """One window's class probabilities ``(classes,)``: ``start_s``/``end_s`` in seconds from the
    source's first frame, ``lag_s`` from the arrival of the frame its last timestamp took to the
    probabilities (waiting for the next frame, which settles that timestamp, included)."""

    start_s: float
    end_s: float
    lag_s: float
    probabilities: torch.Tensor

    def record(self, classes: Sequence[str], topk: int) -> dict:
        """As ``predict --json`` writes a video: ``start``, ``end``, ``lag_s``, ``predictions``."""
        scores, indices = self.probabilities.topk(min(topk, len(classes)))
        return {
            "start": round(self.start_s, 3),
            "end": round(self.end_s, 3),
            "lag_s": round(self.lag_s, 4),
            "predictions": [{"label": classes[i], "score": float(s)} for s, i in zip(scores, indices)],
        }


@dataclass
class LiveSummary:
    """A live session's counts (:class:`~vidaccel_train.data.live.LiveStats`), the lags of the
    windows scored (seconds) and why it ended."""

    stats: LiveStats = field(default_factory=LiveStats)
    lags: list[float] = field(default_factory=list)
    ended: str = ""

    def percentile(self, q: float) -> float | None:
        return None if not self.lags else float(torch.tensor(self.lags).quantile(q / 100))

    def record(self) -> dict:
        return {
            "windows": len(self.lags),
            "skipped": self.stats.skipped,
            "lag_p50_s": _rounded(self.percentile(50)),
            "lag_p95_s": _rounded(self.percentile(95)),
            "frames": self.stats.frames,
            "dropped": self.stats.dropped,
            "reopened": self.stats.reopened,
            "ended": self.ended,
        }

    def line(self) -> str:
        r = self.record()
        lag = (
            ""
            if r["lag_p50_s"] is None
            else f"; lag p50 {r['lag_p50_s'] * 1000:.0f} ms, p95 {r['lag_p95_s'] * 1000:.0f} ms"
        )
        return (
            f"{r['windows']} windows scored, {r['skipped']} skipped{lag}; {r['frames']} frames received, "
            f"{r['dropped']} dropped; reopened {r['reopened']} times; ended: {r['ended']}"
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def live_windows(predictor: Predictor, feed: LiveFeed, summary: LiveSummary) -> Iterator[LiveWindow]:
    """The predictions of an entered ``feed``'s clips as they come; ``summary`` is kept up to date."""
    for clip in feed.clips():
        probabilities = predictor.clip_probabilities(clip.frames)
        window = LiveWindow(clip.start_s, clip.end_s, time.monotonic() - clip.arrived, probabilities)
        summary.lags.append(window.lag_s)
        summary.stats = feed.stats
        yield window
    summary.stats, summary.ended = feed.stats, feed.ended or ""


def open_feed(predictor: Predictor, source: LiveSource, stride_s: float | None, reconnect_s: float) -> LiveFeed:
    """A :class:`LiveFeed` of ``source`` with the predictor's clip contract and display aspect,
    a window every ``stride_s`` seconds (default: the clip's span); enter it to start."""
    return LiveFeed(source, predictor.clip, stride_s or predictor.clip.span_s, predictor.display_aspect, reconnect_s)
