"""Clip transforms built on ``torchvision.transforms.v2``, which treats a ``Video`` as one
sample: random crop/flip parameters are drawn once per clip and applied to every frame."""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2

KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


class ToChannelsFirstClip(torch.nn.Module):
    """``(T, C, H, W)`` -> ``(C, T, H, W)``, the layout 3-D video models take."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video.as_subclass(torch.Tensor).permute(1, 0, 2, 3).contiguous()


def build_transform(
    train: bool,
    crop_size: int,
    short_side: int | Sequence[int],
    mean: Sequence[float] = KINETICS_MEAN,
    std: Sequence[float] = KINETICS_STD,
    hflip: bool = True,
) -> v2.Compose:
    """Train: random short-side scale in ``[short_side[0], short_side[1]]``, random crop, flip.
    Eval: resize the short side to ``short_side``, centre crop."""
    if train:
        low, high = (short_side, short_side) if isinstance(short_side, int) else tuple(short_side)
        steps = [v2.RandomResize(low, high + 1, antialias=True), v2.RandomCrop(crop_size)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
    else:
        size = short_side if isinstance(short_side, int) else short_side[0]
        steps = [v2.Resize(size, antialias=True), v2.CenterCrop(crop_size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std)), ToChannelsFirstClip()]
    return v2.Compose(steps)

