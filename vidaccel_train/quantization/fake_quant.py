"""Faster activation fake quantization for QAT: the same numbers as torchao's, less work.

The XNNPACK quantizer's QAT config fake-quantizes every activation with torchao's
``FusedMovingAvgObsFakeQuantize``, whose CPU rounding kernel is slow (it outweighs the
convolutions' backward in a QAT step: docs/benchmarks.md, "The figures behind the code's
choices"). Two changes:

- :class:`VectorisedFakeQuantize`: the moving-average observer and the choice of scale and zero
  point stay the stock fused op's (fed the tensor's min and max, which is all it reads); the
  rounding is four vectorised passes and the gradient one fused pass: the stock values and
  gradient, bit for bit. CUDA keeps the stock kernel.
- :func:`pass_through_moved_values`: a shared quantizer no longer fake-quantizes again values
  that were only sliced, joined or zeroed since it rounded them (a quarter to a third of the calls).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import fx, nn
from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase, FusedMovingAvgObsFakeQuantize


@functools.cache
def _open_bounds(low: int, high: int) -> tuple[float, float]:
    """Float32 ``(a, b)`` with ``low <= round(y) <= high`` exactly when ``a < y < b``.

    ``round`` takes halves to the even neighbour, so ``low - 0.5`` rounds into the range when
    ``low`` is even and out of it when odd (and likewise ``high + 0.5``).
    """
    below, above = np.float32(-np.inf), np.float32(np.inf)
    lower = np.float32(low - 0.5)
    upper = np.float32(high + 0.5)
    return (
        float(np.nextafter(lower, below) if low % 2 == 0 else lower),
        float(np.nextafter(upper, above) if high % 2 == 0 else upper),
    )


class _RoundToGrid(torch.autograd.Function):
    """``(clamp(round(x / scale) + zero_point) - zero_point) * scale`` with the straight-through
    gradient of ``torch.fake_quantize_per_tensor_affine``: passed where the level was in range.

    The zero point is an integer, so clamping ``round(x / scale)`` to the range shifted by it
    gives the same whole numbers without adding and subtracting it: four passes over ``x``
    (a negative ``x`` that rounds to level 0 gives -0.0 where the stock op gives +0.0).
    The gradient mask is not stored: backward reads it off the saved ``x / scale`` with
    ``hardtanh_backward``, one fused pass.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int):
        # x * (1 / scale), not x / scale: the stock kernel multiplies by the inverse too.
        scaled = x.mul(1.0 / scale)
        low, high = quant_min - zero_point, quant_max - zero_point
        ctx.bounds = _open_bounds(low, high)
        ctx.save_for_backward(scaled)
        return scaled.round().clamp_(low, high).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scaled,) = ctx.saved_tensors
        # Slicing's backward hands channels-last graphs contiguous gradients; comparing those
        # with channels-last values walks one of them against its layout, far slower than a copy.
        if scaled.dim() == 4 and scaled.is_contiguous(memory_format=torch.channels_last):
            grad = grad.contiguous(memory_format=torch.channels_last)
        return torch.ops.aten.hardtanh_backward(grad, scaled, *ctx.bounds), None, None, None, None


def _dense_flat(x: torch.Tensor) -> torch.Tensor:
    """``x``'s elements as one flat view where they lie densely (contiguous or channels-last),
    else ``x``: ``aminmax`` walks a channels-last tensor in logical order, six times slower."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1)
    return x.reshape(-1) if x.is_contiguous() else x


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
        summary = (
            torch.stack(torch.aminmax(_dense_flat(x.detach()))) if observing else x.detach().as_strided((1,), (1,))
        )
        torch.fused_moving_avg_obs_fake_quant(
            summary,
            self.observer_enabled,
            self.fake_quant_enabled,
            observer.min_val,
            observer.max_val,
            self.scale,
            self.zero_point,
            observer.averaging_constant,
            observer.quant_min,
            observer.quant_max,
            self.ch_axis,
            self.is_per_channel,
            self.is_symmetric_quant,
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


# ------------------------------------------------------------------ values that only move

_aten = torch.ops.aten


def pass_through(x: torch.Tensor, quantizer: nn.Module) -> torch.Tensor:
    """Stands in a QAT graph for a call of ``quantizer`` where it meets values it already put
    on its grid (see :func:`pass_through_moved_values`). The graph still reads the quantizer
    (a ``get_attr``), so copies of the graph keep it under its name."""
    return x


def _quantizer_name(node: fx.Node) -> str | None:
    """The per-tensor fake-quantizer a node applies (or passes through), if it is one."""
    if node.op == "call_function" and node.target is pass_through:
        return node.args[1].target
    if node.op == "call_module":
        module = node.graph.owning_module.get_submodule(node.target)
        if isinstance(module, FakeQuantizeBase) and not module.is_per_channel:
            return node.target
    return None


def _is_zero_constant(node) -> bool:
    """A fake-quantized constant that is all zeros (the deploy form's empty frames)."""
    if not isinstance(node, fx.Node) or node.op != "call_module" or _quantizer_name(node) is None:
        return False
    source = node.args[0]
    return source.op == "get_attr" and not torch.count_nonzero(getattr(node.graph.owning_module, source.target))


def _moves_values_of(node: fx.Node, module: nn.Module) -> bool:
    """Whether ``node`` only slices, joins or zeroes tensors that ``module`` fake-quantized."""
    graph_module = node.graph.owning_module

    def quantized_by_module(arg) -> bool:
        name = _quantizer_name(arg) if isinstance(arg, fx.Node) else None
        return name is not None and graph_module.get_submodule(name) is module

    if node.op != "call_function":
        return False
    if node.target == _aten.slice.Tensor:
        return quantized_by_module(node.args[0])
    if node.target == _aten.cat.default:
        return all(quantized_by_module(arg) for arg in node.args[0])
    if node.target == _aten.hardtanh.default:  # a clamp to [0, 0]: the deploy form's zero frames
        return quantized_by_module(node.args[0]) and tuple(node.args[1:3]) == (0.0, 0.0)
    if node.target == _aten.mul.Tensor:  # zero frames of deploy-form revision 1
        left, right = node.args[:2]
        return (quantized_by_module(left) and _is_zero_constant(right)) or (
            quantized_by_module(right) and _is_zero_constant(left)
        )
    return False


def pass_through_moved_values(prepared: fx.GraphModule) -> int:
    """Let moved int8 values through instead of fake-quantizing them again; returns how many.

    The XNNPACK quantizer gives a slice, a concatenation and a product with zero frames the
    quantization parameters of their input (one shared fake-quantizer), so the int8 program
    moves those int8 values without requantizing them. torchao's QAT fake-quantizes each of
    them again and moves the shared range by each: five range updates a step for every
    shifted tap of a temporal convolution, one of them on all-zero frames, and every value
    rounded again on a slightly moved grid. Here the shared quantizer observes and rounds
    once, where its values are made; with frozen ranges the result is bit for bit torchao's
    (rounding on-grid values onto the same grid changes nothing). :func:`restore_moved_values`
    puts the quantizer calls back for conversion, so the int8 program is the same either way.
    """
    count = 0
    for node in list(prepared.graph.nodes):
        name = _quantizer_name(node)
        if name is None or node.op != "call_module":
            continue
        if _moves_values_of(node.args[0], prepared.get_submodule(name)):
            with prepared.graph.inserting_before(node):
                quantizer = prepared.graph.get_attr(name)
            node.op, node.target, node.args = "call_function", pass_through, (node.args[0], quantizer)
            count += 1
    prepared.recompile()
    return count


def restore_moved_values(prepared: fx.GraphModule) -> fx.GraphModule:
    """Undo :func:`pass_through_moved_values` (in place): every quantizer call as prepared."""
    for node in list(prepared.graph.nodes):
        if node.op == "call_function" and node.target is pass_through:
            quantizer = node.args[1]
            node.op, node.target, node.args = "call_module", quantizer.target, (node.args[0],)
            prepared.graph.erase_node(quantizer)
    prepared.recompile()
    return prepared
