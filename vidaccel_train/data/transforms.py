"""Clip transforms built on ``torchvision.transforms.v2``, which treats a ``Video`` as one
sample: random crop/flip parameters are drawn once per clip and applied to every frame."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from vidaccel_train.data.contract import KINETICS_MEAN, KINETICS_STD


class ToChannelsFirstClip(torch.nn.Module):
    """``(..., T, C, H, W)`` -> ``(..., C, T, H, W)``, the layout 3-D video models take."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video.as_subclass(torch.Tensor).transpose(-4, -3).contiguous()


def crop_offsets(length: int, crop: int, count: int) -> list[int]:
    """Where ``count`` crops of ``crop`` pixels sit along ``length``: evenly from the start to the
    end (one: centred), as the X3D and SlowFast papers' 3-crop testing does."""
    if crop > length:
        raise ValueError(f"a crop of {crop} pixels does not fit in {length}")
    if count == 1:
        return [(length - crop) // 2]
    return [round(i * (length - crop) / (count - 1)) for i in range(count)]


class SpatialCrops(torch.nn.Module):
    """``count`` square crops along the long side of a clip, centred on the short side:
    ``(T, C, H, W)`` -> ``(count, T, C, crop, crop)``."""

    def __init__(self, size: int, count: int):
        super().__init__()
        self.size, self.count = size, count

    def forward(self, video: tv_tensors.Video) -> tv_tensors.Video:
        height, width = video.shape[-2:]
        if width >= height:
            boxes = [((height - self.size) // 2, left) for left in crop_offsets(width, self.size, self.count)]
        else:
            boxes = [(top, (width - self.size) // 2) for top in crop_offsets(height, self.size, self.count)]
        crops = [v2.functional.crop(video, top, left, self.size, self.size) for top, left in boxes]
        return tv_tensors.Video(torch.stack(crops))


def build_transform(
    train: bool,
    crop_size: int,
    short_side: int | Sequence[int],
    mean: Sequence[float] = KINETICS_MEAN,
    std: Sequence[float] = KINETICS_STD,
    hflip: bool = True,
    crops: int | None = None,
) -> v2.Compose:
    """Train: random short-side scale in ``[short_side[0], short_side[1]]``, random crop, flip.
    Eval: resize the short side to ``short_side``, centre crop; with ``crops`` set, that many
    crops along the long side instead, stacked as ``(crops, C, T, H, W)``."""
    if train:
        low, high = (short_side, short_side) if isinstance(short_side, int) else tuple(short_side)
        steps = [v2.RandomResize(low, high + 1, antialias=True), v2.RandomCrop(crop_size)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
    else:
        size = short_side if isinstance(short_side, int) else short_side[0]
        crop = v2.CenterCrop(crop_size) if crops is None else SpatialCrops(crop_size, crops)
        steps = [v2.Resize(size, antialias=True), crop]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std)), ToChannelsFirstClip()]
    return v2.Compose(steps)
