"""The deploy form: every block rewritten as 2-D operators on clips with time folded into batch.

The train form (PyTorchVideo's efficient blocks) runs Conv3d on ``(B, C, T, H, W)``. Mobile
runtimes have no fast Conv3d (XNNPACK has none at all), so the deploy form carries a clip as
``(T*B, C, H, W)``, time-major: rows ``t*B .. t*B+B-1`` hold frame ``t`` of every clip.

- a ``kt x kh x kw`` Conv3d becomes ``kt`` Conv2d "taps" over all frames at once; the clip is
  padded in time once (zero frames joined before and after: the Conv3d's temporal zero
  padding), tap ``k`` reads the frames ``k - kt//2`` away (a slice of whole ``B``-row blocks)
  and the taps are summed; BatchNorm is folded into the weights. Time-major is what makes the
  move a plain 4-D slice: batch-major ``(B*T, ...)`` would need a 5-D view, which XNNPACK pays
  for with two full-size transposes per use;
- pooling over a clip is a 4-D mean over ``(H, W)`` then one over T (after a permute of the
  small pooled tensor), the only ``mean`` XNNPACK takes;
- per-clip scales (squeeze-excite) are repeated over T on the small ``(B, C)`` tensor and
  broadcast as ``(T*B, C, 1, 1)``.

The batch size is never baked in (it is read from the input's shape), and there is no
per-frame Python loop, so one converted model serves any batch and exports with a dynamic
batch dimension. Each train-form block type has a converter registered with
:func:`deploy_form`; a block without one is an error that names it.

Revisions (:data:`REVISION`): the operators a deploy form is made of decide the quantized graph
a QAT checkpoint's observers belong to, so a checkpoint records the revision it was made with
and :func:`to_deploy_form` rebuilds that one.

- 1: each tap's output shifted and joined with zero frames made as ``x * 0.0``; squeeze-excite's
  scale repeated over time by adding it to ``frames * 0.0``. In the int8 XNNPACK program each
  product is a Multiply between two transposes (the 0.0 constant is a channels-first operand).
- 2 (current): the input padded once per temporal convolution, zeros made by a clamp to
  ``[0, 0]`` (XNNPACK's Clamp keeps its input's layout and quantization). X3D-XS's int8
  program runs 698 XNNPACK operators instead of 897: 71 Multiply, 112 Transpose, 29 Slice and
  29 Copy fewer, 42 Clamp more (``scripts/profile_pte.py``; timings in docs/benchmarks.md).
"""

from __future__ import annotations

import copy
from functools import singledispatch

import torch
import torch.nn.functional as F
from fvcore.nn.squeeze_excitation import SqueezeExcitation as FvcoreSqueezeExcitation
from pytorchvideo.layers.accelerator.mobile_cpu import activation_functions as pv_act
from pytorchvideo.layers.accelerator.mobile_cpu.attention import SqueezeExcitation
from pytorchvideo.layers.accelerator.mobile_cpu.convolutions import (
    Conv3d3x3x3DwBnAct,
    Conv3d5x1x1BnAct,
    Conv3dPwBnAct,
    Conv3dTemporalKernel1BnAct,
)
from pytorchvideo.layers.accelerator.mobile_cpu.fully_connected import FullyConnected
from pytorchvideo.layers.accelerator.mobile_cpu.pool import AdaptiveAvgPool3dOutSize1
from pytorchvideo.models.accelerator.mobile_cpu.residual_blocks import X3dBottleneckBlock
from torch import nn

from vidaccel_train.models.x3d import EfficientX3dNet


class UnsupportedBlockError(TypeError):
    """A train-form module with no registered deploy form."""


REVISION = 2  # the deploy form made now; see the module docstring for what changed
REVISIONS = (1, 2)


# ----------------------------------------------------------------------------- deploy modules


class FoldTime(nn.Module):
    """``(B, C, T, H, W)`` -> ``(T*B, C, H, W)``, time-major: the deploy form's entry."""

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        _, channels, _, height, width = clip.shape
        return clip.permute(2, 0, 1, 3, 4).reshape(-1, channels, height, width)


def frame_means(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Mean over H and W of every frame: ``(T*B, C, H, W)`` -> ``(T, B, C, 1)``."""
    return x.mean(dim=(2, 3), keepdim=True).reshape(num_frames, -1, x.shape[1], 1)


def clip_mean(frames: torch.Tensor) -> torch.Tensor:
    """Mean over T of :func:`frame_means`: ``(T, B, C, 1)`` -> ``(B, C, 1, 1)``."""
    return frames.permute(1, 2, 0, 3).mean(dim=(2, 3), keepdim=True)


def zeros_from(x: torch.Tensor, revision: int = REVISION) -> torch.Tensor:
    """Zeros shaped like ``x``, made from ``x`` so the batch size stays symbolic.

    Revision 2 clamps to ``[0, 0]``: an int8 program keeps the input's quantization (zero is its
    zero point) and layout. Revision 1 multiplied by 0.0 (see the module's revisions).
    """
    return F.hardtanh(x, 0.0, 0.0) if revision >= 2 else x * 0.0


def shift_frames(x: torch.Tensor, step: int, num_frames: int) -> torch.Tensor:
    """Frame ``t`` of each clip takes frame ``t + step``; zero frames past either end (revision 1)."""
    if step == 0:
        return x
    rows = abs(step) * (x.shape[0] // num_frames)  # whole frames of the time-major batch
    zeros = zeros_from(x[:rows], revision=1)
    return torch.cat([x[rows:], zeros]) if step > 0 else torch.cat([zeros, x[:-rows]])


class Swish(nn.Module):
    """``x * sigmoid(x)`` as plain operators (the train form uses a custom autograd op)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class TemporalConv(nn.Module):
    """A Conv3d with temporal stride 1 and 'same' padding as ``kt`` Conv2d taps over shifted frames, summed.

    ``forward`` takes and returns ``(T*B, C, H, W)`` time-major clips (``T = num_frames``).
    """

    def __init__(self, taps: list[nn.Conv2d], temporal_padding: int, num_frames: int, revision: int = REVISION):
        super().__init__()
        self.taps = nn.ModuleList(taps)
        self.temporal_padding = temporal_padding
        self.num_frames = num_frames
        self.revision = revision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.revision < 2:
            return self._shifted_outputs(x)
        centre = self.temporal_padding
        reach = min(centre, self.num_frames - 1)  # taps further out only ever see padding
        total = self.taps[centre](x)  # frame t from frame t; this tap carries the bias
        if reach == 0:
            return total
        rows = x.shape[0] // self.num_frames  # one frame of the time-major batch
        zeros = zeros_from(x[: reach * rows])
        padded = torch.cat([zeros, x, zeros])  # frames -reach .. T-1+reach
        for index, tap in enumerate(self.taps):
            step = index - centre
            if step != 0 and abs(step) <= reach:
                start = (reach + step) * rows
                total = total + tap(padded[start : start + x.shape[0]])
        return total

    def _shifted_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Revision 1: every tap over the clip, its output shifted in time."""
        total = None
        for index, tap in enumerate(self.taps):
            step = index - self.temporal_padding
            if abs(step) >= self.num_frames:  # this tap only ever sees padding
                continue
            out = shift_frames(tap(x), step, self.num_frames)
            total = out if total is None else total + out
        return total


class ClipSqueezeExcite(nn.Module):
    """Squeeze-excite with the squeeze over each whole clip, as the 3-D train form."""

    def __init__(
        self, reduce: nn.Conv2d, activation: nn.Module, expand: nn.Conv2d, num_frames: int, revision: int = REVISION
    ):
        super().__init__()
        self.reduce, self.activation, self.expand = reduce, activation, expand
        self.num_frames = num_frames
        self.revision = revision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        frames = frame_means(x, self.num_frames)  # (T, B, C, 1)
        scale = torch.sigmoid(self.expand(self.activation(self.reduce(clip_mean(frames)))))  # (B, C, 1, 1)
        # Repeated over T by a broadcast add to zeros: XNNPACK has no expand, and a cat of one
        # tensor with itself does not delegate.
        per_frame = zeros_from(frames, self.revision) + scale.reshape(1, -1, channels, 1)  # (T, B, C, 1)
        return x * per_frame.reshape(-1, channels, 1, 1)


class ClipPool(nn.Module):
    """Global average pool per clip: ``(T*B, C, H, W)`` -> ``(B, C, 1, 1)``."""

    def __init__(self, num_frames: int):
        super().__init__()
        self.num_frames = num_frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clip_mean(frame_means(x, self.num_frames))


class ResidualBottleneck(nn.Module):
    """X3D bottleneck: ``act(branch(x) + shortcut(x))``."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None, activation: nn.Module):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.branch(x) + self.shortcut(x))


class Classifier(nn.Module):
    """``(B, C, 1, 1)`` -> logits ``(B, classes)``."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(-1, self.linear.in_features))


# ---------------------------------------------------------------------------------- converters


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm | None):
    """Weights and bias of ``bn(conv(x))`` as one convolution (eval-mode statistics)."""
    bias = weight.new_zeros(weight.shape[0]) if bias is None else bias
    if bn is None:
        return weight, bias
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return weight * scale.reshape(shape), (bias - bn.running_mean) * scale + bn.bias


@torch.no_grad()
def temporal_conv(conv: nn.Conv3d, bn: nn.Module | None, num_frames: int) -> TemporalConv:
    """The deploy form of ``bn(conv(x))`` for a Conv3d with temporal stride 1 and 'same' padding."""
    kt, kh, kw = conv.kernel_size
    if conv.stride[0] != 1 or conv.dilation[0] != 1 or conv.padding[0] * 2 != kt - 1:
        raise UnsupportedBlockError(
            f"{conv}: only temporal stride 1, dilation 1 and padding (kt-1)/2 keep T; got stride "
            f"{conv.stride}, dilation {conv.dilation}, padding {conv.padding}"
        )
    weight, bias = fold_batchnorm(conv.weight, conv.bias, bn)
    taps = []
    for index in range(kt):
        tap = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            (kh, kw),
            stride=conv.stride[1:],
            padding=conv.padding[1:],
            dilation=conv.dilation[1:],
            groups=conv.groups,
            bias=index == kt // 2,
            device=weight.device,
            dtype=weight.dtype,
        )
        tap.weight.copy_(weight[:, :, index])
        if tap.bias is not None:
            tap.bias.copy_(bias)
        taps.append(tap)
    return TemporalConv(taps, conv.padding[0], num_frames)


@singledispatch
def deploy_form(module: nn.Module, num_frames: int) -> nn.Module:
    """The deploy form of a train-form module, for clips of ``num_frames`` frames."""
    raise UnsupportedBlockError(
        f"no deploy form for {type(module).__module__}.{type(module).__name__}; "
        "register one with @vidaccel_train.models.deploy.deploy_form.register"
    )


@deploy_form.register
def _(module: nn.Sequential, num_frames: int) -> nn.Module:
    return nn.Sequential(*(deploy_form(child, num_frames) for child in module.children()))


@deploy_form.register(nn.Identity)
@deploy_form.register(nn.ReLU)
@deploy_form.register(nn.Hardswish)
@deploy_form.register(nn.Sigmoid)
def _(module: nn.Module, num_frames: int) -> nn.Module:
    return copy.deepcopy(module)


@deploy_form.register(nn.Dropout)
def _(module: nn.Module, num_frames: int) -> nn.Module:
    return nn.Identity()


@deploy_form.register(pv_act.Swish)
def _(module: nn.Module, num_frames: int) -> nn.Module:
    return Swish()


@deploy_form.register(pv_act.ReLU)
@deploy_form.register(pv_act.HardSwish)
@deploy_form.register(pv_act.Identity)
def _(module: nn.Module, num_frames: int) -> nn.Module:
    return deploy_form(module.act, num_frames)


@deploy_form.register(nn.Conv3d)
def _(module: nn.Conv3d, num_frames: int) -> nn.Module:
    return temporal_conv(module, None, num_frames)


@deploy_form.register(Conv3dPwBnAct)
@deploy_form.register(Conv3d3x3x3DwBnAct)
@deploy_form.register(Conv3d5x1x1BnAct)
@deploy_form.register(Conv3dTemporalKernel1BnAct)
def _(module: nn.Module, num_frames: int) -> nn.Module:
    kernel = module.kernel
    conv = temporal_conv(kernel.conv, getattr(kernel, "bn", None), num_frames)
    return nn.Sequential(conv, deploy_form(kernel.act, num_frames))


@deploy_form.register
def _(module: SqueezeExcitation, num_frames: int) -> nn.Module:
    return deploy_form(module.se, num_frames)


@deploy_form.register
@torch.no_grad()
def _(module: FvcoreSqueezeExcitation, num_frames: int) -> nn.Module:
    reduce3d, activation, expand3d, _sigmoid = module.block
    reduce, expand = (
        nn.Conv2d(
            c.in_channels, c.out_channels, 1, bias=c.bias is not None, device=c.weight.device, dtype=c.weight.dtype
        )
        for c in (reduce3d, expand3d)
    )
    for conv2d, conv3d in ((reduce, reduce3d), (expand, expand3d)):
        conv2d.weight.copy_(conv3d.weight[:, :, 0])
        if conv3d.bias is not None:
            conv2d.bias.copy_(conv3d.bias)
    return ClipSqueezeExcite(reduce, copy.deepcopy(activation), expand, num_frames)


@deploy_form.register
def _(module: X3dBottleneckBlock, num_frames: int) -> nn.Module:
    branch = deploy_form(module.layers, num_frames)
    if not module._use_residual:
        return nn.Sequential(branch, deploy_form(module.final_act, num_frames))
    shortcut = deploy_form(module._res_proj, num_frames) if module._res_proj is not None else None
    return ResidualBottleneck(branch, shortcut, deploy_form(module.final_act, num_frames))


@deploy_form.register
def _(module: AdaptiveAvgPool3dOutSize1, num_frames: int) -> nn.Module:
    return ClipPool(num_frames)


@deploy_form.register
@torch.no_grad()
def _(module: FullyConnected, num_frames: int) -> nn.Module:
    return Classifier(copy.deepcopy(module.model))


@deploy_form.register
def _(module: EfficientX3dNet, num_frames: int) -> nn.Module:
    stages = [getattr(module, f"s{i}") for i in range(1, module.num_stages + 2)]
    return nn.Sequential(
        FoldTime(),
        *(deploy_form(stage, num_frames) for stage in stages),
        deploy_form(module.head, num_frames),  # ends in a per-clip pool: (B, C, 1, 1)
        deploy_form(module.projection, num_frames),
    )


def to_deploy_form(model: nn.Module, num_frames: int, revision: int = REVISION) -> nn.Module:
    """A deploy-form copy of ``model`` in eval mode; ``model`` itself is left untouched.

    ``revision`` picks the operators of an older deploy form (see the module docstring), for
    quantized checkpoints made with it; the numbers are the same to float rounding.

    Raises:
        UnsupportedBlockError: a module has no deploy form.
        ValueError: ``revision`` is not one of :data:`REVISIONS`.
    """
    if revision not in REVISIONS:
        raise ValueError(f"deploy-form revision must be one of {REVISIONS}, got {revision!r}")
    model = copy.deepcopy(model).eval()
    deployed = deploy_form(model, num_frames).eval()
    for module in deployed.modules():
        if isinstance(module, (TemporalConv, ClipSqueezeExcite)):
            module.revision = revision
    return deployed
