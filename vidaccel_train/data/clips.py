"""Clip sampling: which timestamps of a video make up one model input."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.data import Dataset, Sampler
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
        return float(torch.rand(())) * self._slack(info)

    def centre_start(self, info: VideoInfo) -> float:
        return self._slack(info) / 2

    def _slack(self, info: VideoInfo) -> float:
        duration = info.duration_s if math.isfinite(info.duration_s) else self.span_s
        return max(0.0, duration - self.span_s)


class EpochShuffleSampler(Sampler):
    """Shuffles by ``(seed, epoch)`` and hands each index its own augmentation seed.

    Clip choice and augmentation then depend only on the seed, the epoch and the index, not on
    worker count or RNG history, so a run resumed from a checkpoint sees the very clips an
    unstopped run would. Lightning calls ``set_epoch`` (and shards it under DDP).
    """

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.seed = seed or 0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=generator).tolist()
        return iter(zip(order, seeds))


class ClipDataset(Dataset):
    """One clip per video: a random one in training, the centre one otherwise.

    Items are indices, or ``(index, seed)`` pairs from :class:`EpochShuffleSampler`, which make
    the random clip and augmentation of that item reproducible.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], clip: ClipSpec, train: bool, transform):
        self.samples = list(samples)
        self.clip = clip
        self.train = train
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        if isinstance(item, tuple):
            index, seed = item
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._load(index)
        return self._load(item)

    def _load(self, index: int) -> dict:
        path, label = self.samples[index]
        pick_start = self.clip.random_start if self.train else self.clip.centre_start
        frames, _ = read_clip(path, lambda info: self.clip.timestamps(pick_start(info)))
        video = self.transform(tv_tensors.Video(frames))
        return {"video": video, "label": torch.tensor(label), "index": torch.tensor(index)}
