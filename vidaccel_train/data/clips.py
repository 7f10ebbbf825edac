"""Clip sampling: which timestamps of a video make up one model input."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from vidaccel_train.data.video_io import VideoInfo, read_clip

# Half a millisecond past the wanted instant so that rounding never picks the previous frame.
_EPSILON_S = 5e-4


@dataclass(frozen=True)
class ClipSpec:
    """A model's input clip: ``num_frames`` frames, ``sampling_rate`` frames apart at ``target_fps``."""

    num_frames: int
    sampling_rate: int
    target_fps: float = 30.0

    @property
    def span_s(self) -> float:
        return self.num_frames * self.sampling_rate / self.target_fps

    def timestamps(self, start_s: float) -> list[float]:
        step = self.sampling_rate / self.target_fps
        return [start_s + i * step + _EPSILON_S for i in range(self.num_frames)]

    def random_start(self, info: VideoInfo) -> float:
        return random.uniform(0.0, self._slack(info))

    def centre_start(self, info: VideoInfo) -> float:
        return self._slack(info) / 2

    def _slack(self, info: VideoInfo) -> float:
        duration = info.duration_s if math.isfinite(info.duration_s) else self.span_s
        return max(0.0, duration - self.span_s)


class ClipDataset(Dataset):
    """One clip per video: a random one in training, the centre one otherwise."""

    def __init__(self, samples: Sequence[tuple[str, int]], clip: ClipSpec, train: bool, transform):
        self.samples = list(samples)
        self.clip = clip
        self.train = train
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        pick_start = self.clip.random_start if self.train else self.clip.centre_start
        frames, _ = read_clip(path, lambda info: self.clip.timestamps(pick_start(info)))
        video = self.transform(tv_tensors.Video(frames))
        return {"video": video, "label": torch.tensor(label), "index": torch.tensor(index)}
