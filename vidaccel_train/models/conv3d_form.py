"""The 3-D form: a deploy form written back as 3-D operators on ``(B, C, T, H, W)`` clips.

The deploy form (:mod:`.deploy`) exists because XNNPACK has no Conv3d. OpenVINO's CPU plugin
runs Conv3d natively, and the deploy form's time-folded graph is slower there
(docs/benchmarks.md). The 3-D form is the same network, weights and numbers (to float rounding)
as a deploy form, with each temporal convolution's taps stacked back into one Conv3d kernel,
BatchNorm staying folded in, and the per-clip pools and squeeze-excite as means over
``(T, H, W)``. It is built from a deploy form so that a quantization-aware run's trained weights
(which live in the deploy form) carry over exactly.
"""

from __future__ import annotations

import copy
from functools import singledispatch

import torch
from torch import nn

from vidaccel_train.models.deploy import (
    Classifier,
    ClipPool,
    ClipSqueezeExcite,
    FoldTime,
    ResidualBottleneck,
    Swish,
    TemporalConv,
    UnsupportedBlockError,
)


class ClipSqueezeExcite3d(nn.Module):
    """Squeeze-excite over each whole clip on ``(B, C, T, H, W)``."""

    def __init__(self, reduce: nn.Conv3d, activation: nn.Module, expand: nn.Conv3d):
        super().__init__()
        self.reduce, self.activation, self.expand = reduce, activation, expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3, 4), keepdim=True)
        return x * torch.sigmoid(self.expand(self.activation(self.reduce(scale))))


class ClipPool3d(nn.Module):
    """Global average pool per clip: ``(B, C, T, H, W)`` -> ``(B, C, 1, 1, 1)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3, 4), keepdim=True)


@torch.no_grad()
def _conv3d(taps: list[nn.Conv2d], temporal_padding: int) -> nn.Conv3d:
    """One Conv3d whose kernel is ``taps`` stacked in time (the bias is the centre tap's)."""
    first = taps[0]
    conv = nn.Conv3d(
        first.in_channels,
        first.out_channels,
        (len(taps), *first.kernel_size),
        stride=(1, *first.stride),
        padding=(temporal_padding, *first.padding),
        dilation=(1, *first.dilation),
        groups=first.groups,
        bias=any(tap.bias is not None for tap in taps),
        device=first.weight.device,
        dtype=first.weight.dtype,
    )
    conv.weight.copy_(torch.stack([tap.weight for tap in taps], dim=2))
    if conv.bias is not None:
        conv.bias.copy_(sum(tap.bias for tap in taps if tap.bias is not None))
    return conv


def _pointwise3d(conv: nn.Conv2d) -> nn.Conv3d:
    return _conv3d([conv], 0)


@singledispatch
def conv3d_form(module: nn.Module) -> nn.Module:
    """The 3-D form of a deploy-form module (weights copied, ``module`` left untouched).

    Raises:
        UnsupportedBlockError: a module with no 3-D form registered.
    """
    raise UnsupportedBlockError(
        f"no 3-D form for {type(module).__module__}.{type(module).__name__}; "
        "register one with @vidaccel_train.models.conv3d_form.conv3d_form.register"
    )


@conv3d_form.register
def _(module: nn.Sequential) -> nn.Module:
    return nn.Sequential(*(conv3d_form(child) for child in module.children()))


@conv3d_form.register(nn.Identity)
@conv3d_form.register(nn.ReLU)
@conv3d_form.register(nn.Hardswish)
@conv3d_form.register(nn.Sigmoid)
@conv3d_form.register(Swish)
@conv3d_form.register(Classifier)  # reshapes (B, C, 1, 1, 1) as it does (B, C, 1, 1)
def _(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module)


@conv3d_form.register
def _(module: FoldTime) -> nn.Module:
    return nn.Identity()


@conv3d_form.register
def _(module: TemporalConv) -> nn.Module:
    return _conv3d(list(module.taps), module.temporal_padding)


@conv3d_form.register
def _(module: ClipSqueezeExcite) -> nn.Module:
    return ClipSqueezeExcite3d(
        _pointwise3d(module.reduce), copy.deepcopy(module.activation), _pointwise3d(module.expand)
    )


@conv3d_form.register
def _(module: ClipPool) -> nn.Module:
    return ClipPool3d()


@conv3d_form.register
def _(module: ResidualBottleneck) -> nn.Module:
    return ResidualBottleneck(conv3d_form(module.branch), conv3d_form(module.shortcut), conv3d_form(module.activation))


@torch.no_grad()
def to_conv3d_form(deployed: nn.Module) -> nn.Module:
    """The 3-D form of the deploy form ``deployed`` (from
    :func:`~vidaccel_train.models.deploy.to_deploy_form`), in eval mode, ``deployed`` left
    untouched. It takes clips ``(B, C, T, H, W)`` and returns logits ``(B, classes)``, as the
    deploy form does, with its weights.

    Raises:
        UnsupportedBlockError: a module of ``deployed`` has no 3-D form.
    """
    return conv3d_form(deployed).eval()
