"""The clip contract: what a model takes, as it was trained, in one vocabulary from the zoo entry
to the export's manifest, and the timestamps of a video that make up one clip. Imports neither
torch nor the decoder (the live reader, a process of its own, uses it alone)."""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vidaccel_train.data.video_io import VideoInfo

# Kinetics' normalisation, as PyTorchVideo's X3D recipes use it.
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)

# Half a millisecond past the wanted instant so that rounding never picks the previous frame.
_EPSILON_S = 5e-4


@dataclass(frozen=True)
class ClipContract:
    """What a model takes, as it was trained: one contract from the zoo entry
    (:data:`vidaccel_train.models.zoo.ZOO`) through the config (``model.clip.*``, which the data
    group reads) to the export's manifest, in one vocabulary.

    ``num_frames`` frames, one every ``sampling_rate`` frames of a ``target_fps`` source (so a
    clip spans ``num_frames * sampling_rate / target_fps`` seconds); for training the short side
    is scaled to a random size in ``train_short_side`` (pixels) and a random ``crop_size``
    square is cut, for evaluation the short side is ``eval_short_side`` and the crops are
    ``crop_size`` squares; RGB in [0, 1] normalised by ``mean`` and ``std`` per channel.
    """

    num_frames: int
    sampling_rate: int
    crop_size: int
    train_short_side: tuple[int, int] | None  # None: not recorded (manifests of version 1)
    eval_short_side: int
    target_fps: float = 30.0
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD

    def __post_init__(self):  # lists from a config or a manifest, kept as tuples (hashable, comparable)
        for name in ("train_short_side", "mean", "std"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def from_dict(cls, values: dict) -> ClipContract:
        """The contract from a mapping with (at least) its fields' names; other keys are ignored.

        Raises:
            KeyError: a field without a default is missing.
        """
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values or f.default is MISSING})

    def as_dict(self) -> dict:
        """The contract as plain values (lists for the tuples): ``model.clip`` and the manifest."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @property
    def span_s(self) -> float:
        """Seconds a clip covers: from its first sampled frame to one sampling step past its last."""
        return self.span_of(self.num_frames, self.sampling_rate, self.target_fps)

    @staticmethod
    def span_of(num_frames: int, sampling_rate: int, target_fps: float) -> float:
        """:attr:`span_s` of a clip of these counts (seconds), for checks before a contract is whole."""
        return num_frames * sampling_rate / target_fps

    @property
    def input_shape(self) -> tuple[int, int, int, int, int]:
        """``(1, C, T, H, W)``: one evaluation clip, an exported program's input."""
        return (1, 3, self.num_frames, self.crop_size, self.crop_size)

    def timestamps(self, start_s: float) -> list[float]:
        step = self.sampling_rate / self.target_fps
        return [start_s + i * step + _EPSILON_S for i in range(self.num_frames)]

    def random_start(self, info: VideoInfo) -> float:
        import torch

        return self.start_at(info, float(torch.rand(())))

    def start_at(self, info: VideoInfo, fraction: float) -> float:
        """The start ``fraction`` of the way through the starts a clip can have."""
        return fraction * self._slack(info)

    def centre_start(self, info: VideoInfo) -> float:
        return self.uniform_starts(info, 1)[0]

    def uniform_starts(self, info: VideoInfo, count: int) -> list[float]:
        """``count`` clips spread evenly over the video (one: the centre clip)."""
        slack = self._slack(info)
        return [slack * (i + 0.5) / count for i in range(count)]

    def _slack(self, info: VideoInfo) -> float:
        duration = info.duration_s if math.isfinite(info.duration_s) else self.span_s
        return max(0.0, duration - self.span_s)
