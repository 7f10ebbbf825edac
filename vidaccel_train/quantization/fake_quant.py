"""A faster per-tensor fake quantization for QAT on the CPU, numerically the stock one.

The XNNPACK quantizer's QAT config fake-quantizes every activation with torchao's
``FusedMovingAvgObsFakeQuantize``. Its CPU rounding kernel is slow: in an X3D-XS QAT step
(batch 8, 160x160, 2 threads) its 742 calls took 0.75 s, more than all the convolutions'
backward. Here the moving-average observer and the choice of scale and zero point stay the
stock fused op's (fed the tensor's min and max, which is all it reads), and the rounding runs
as in-place tensor ops: bit for bit the same values and gradient mask in half the time. CUDA
keeps the stock kernel (not measured there).
"""

from __future__ import annotations

import torch
from torch import nn
from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize


class _RoundToGrid(torch.autograd.Function):
    """``(clamp(round(x / scale) + zero_point) - zero_point) * scale`` with the straight-through
    gradient of ``torch.fake_quantize_per_tensor_affine``: passed where the level was in range."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int):
        # x * (1 / scale), not x / scale: the stock kernel multiplies by the inverse too.
        level = x.mul(1.0 / scale).round_().add_(zero_point)
        centre, half_width = (quant_min + quant_max) / 2, (quant_max - quant_min) / 2
        in_range = (level - centre).abs_().le_(half_width)  # exact: levels are whole numbers
        ctx.save_for_backward(in_range)
        return level.clamp_(quant_min, quant_max).sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (in_range,) = ctx.saved_tensors
        return grad * in_range, None, None, None, None


class VectorisedFakeQuantize(FusedMovingAvgObsFakeQuantize):
    """``FusedMovingAvgObsFakeQuantize`` with the rounding of float32 CPU tensors vectorised;
    same buffers, state dict and conversion. Per-channel (weight) instances and other devices
    run the stock forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or self.is_per_channel or x.dtype != torch.float32 or not x.numel():
            return super().forward(x)
        observer = self.activation_post_process
        observing = bool(self.observer_enabled[0] == 1)
        # The stock op, given [min, max] of x (all its observer reads), moves the running range
        # and sets scale and zero point exactly as it would given x; its rounding of those two
        # values is thrown away.
        summary = torch.stack(torch.aminmax(x.detach())) if observing else x.detach().reshape(-1)[:1]
        torch.fused_moving_avg_obs_fake_quant(
            summary, self.observer_enabled, self.fake_quant_enabled,
            observer.min_val, observer.max_val, self.scale, self.zero_point,
            observer.averaging_constant, observer.quant_min, observer.quant_max,
            self.ch_axis, self.is_per_channel, self.is_symmetric_quant,
        )
        if self.fake_quant_enabled[0] != 1:
            return x
        return _RoundToGrid.apply(x, float(self.scale), int(self.zero_point), observer.quant_min, observer.quant_max)


def vectorise_fake_quantize(prepared: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch a prepared model's fused fake-quantizers to :class:`VectorisedFakeQuantize` (or,
    with ``enabled=False``, back to torchao's stock forward, as benchmarks and tests compare)."""
    old, new = FusedMovingAvgObsFakeQuantize, VectorisedFakeQuantize
    if not enabled:
        old, new = new, old
    for module in prepared.modules():
        if type(module) is old:
            module.__class__ = new
    return prepared
