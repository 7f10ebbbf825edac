"""PT2E quantization of the deploy form with ExecuTorch's XNNPACK quantizer.

What is trained or calibrated is the exported deploy form itself, so the int8 program lowered
later is the very graph whose accuracy was measured. Weights are symmetric per-channel int8,
activations int8, as the XNNPACK delegate runs them.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn
from torch.fx import GraphModule

from vidaccel_train.models.deploy import REVISION, Classifier, to_deploy_form

MODES = ("qat", "ptq")


def xnnpack_quantizer(qat: bool):
    """Per-channel symmetric int8 everywhere but the final classifier.

    The classifier is a tiny share of the work, and int8 logits are coarse enough that
    near-tied classes come out exactly tied; kept in fp32, the int8 program ranks classes
    like the model it came from.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
    return quantizer.set_module_type(Classifier, None)


def device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s weights live: the device every step on it must create tensors on."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def export_deploy_form(net: nn.Module, input_shape: tuple[int, int, int, int], revision: int = REVISION) -> GraphModule:
    """The deploy form (of ``revision``) of ``net`` exported for clips ``(C, T, H, W)`` with a dynamic batch."""
    channels, frames, height, width = input_shape
    deployed = to_deploy_form(net, frames, revision)
    device = device_of(net)
    # Batch 2 in the example: an example batch of 1 would be specialised to a constant.
    example = torch.zeros(2, channels, frames, height, width, device=device)
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(deployed, (example,), dynamic_shapes=({0: batch},)).module()


def prepare(
    net: nn.Module,
    input_shape: tuple[int, int, int, int],
    mode: str,
    channels_last: bool = False,
    requantize_moved_values: bool = False,
    deploy_revision: int = REVISION,
) -> GraphModule:
    """``net``'s deploy form with observers (``ptq``) or fake quantization (``qat``) inserted.

    The result follows ``.train()``/``.eval()`` like a module (Lightning toggles it). QAT's
    activation fake-quantizers round with vectorised ops on the CPU, and values that are only
    sliced, joined or zeroed pass through rather than being fake-quantized again, unless
    ``requantize_moved_values`` asks for torchao's behaviour (:mod:`.fake_quant`).
    ``channels_last`` stores the convolution weights channels-last, which makes every
    activation of the (2-D) deploy form channels-last too, a faster QAT step on the CPU
    (``scripts/bench_qat_step.py``; docs/benchmarks.md). Values are the same to float
    rounding; :func:`convert_int8` converts a contiguous copy. ``deploy_revision`` rebuilds the
    graph of an older deploy form (:data:`vidaccel_train.models.deploy.REVISIONS`), as a
    checkpoint made with it needs.
    """
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    from vidaccel_train.quantization.fake_quant import pass_through_moved_values, vectorise_fake_quantize

    if mode not in MODES:
        raise ValueError(f"quantization mode must be one of {MODES}, got '{mode}'")
    # torch.export and the quantizer make constants and observers without naming a device:
    # have them made where the weights are (a GPU run would otherwise mix cuda and cpu).
    with torch.device(device_of(net)):
        graph = export_deploy_form(net, input_shape, deploy_revision)
        quantizer = xnnpack_quantizer(qat=mode == "qat")
        if mode == "qat":
            prepared = vectorise_fake_quantize(prepare_qat_pt2e(graph, quantizer))
            if not requantize_moved_values:
                pass_through_moved_values(prepared)
        else:
            prepared = prepare_pt2e(graph, quantizer)
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    return allow_exported_model_train_eval(prepared)


def set_observers(prepared: nn.Module, enabled: bool) -> None:
    """Let observers keep updating quantization ranges, or freeze them."""
    from torchao.quantization.pt2e import disable_observer, enable_observer

    prepared.apply(enable_observer if enabled else disable_observer)


@torch.no_grad()
def calibrate(prepared: nn.Module, batches, count: int) -> None:
    """Run ``count`` batches through a prepared model's observers, then freeze its ranges. In fp32
    whatever autocast the caller runs under (a trainer's bf16-mixed): the ranges are of fp32 values."""
    device = device_of(prepared)
    set_observers(prepared, True)
    with torch.autocast(device.type, enabled=False):
        for index, batch in enumerate(batches):
            if index == count:
                break
            prepared(batch["video"].to(device).float())
    set_observers(prepared, False)


def set_fake_quant(prepared: nn.Module, enabled: bool) -> None:
    """Switch fake quantization on (int8 numbers) or off (the same weights in fp32)."""
    from torchao.quantization.pt2e import disable_fake_quant, enable_fake_quant

    prepared.apply(enable_fake_quant if enabled else disable_fake_quant)


def convert_int8(prepared: GraphModule) -> GraphModule:
    """A converted copy (quantize/dequantize around int8 kernels) of a prepared model."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from vidaccel_train.quantization.fake_quant import restore_moved_values

    with torch.device(device_of(prepared)):
        # Every quantizer call back in place, and PyTorch's default layout for the int8
        # program's constants and what export lowers.
        restored = restore_moved_values(copy.deepcopy(prepared)).to(memory_format=torch.contiguous_format)
        converted = allow_exported_model_train_eval(convert_pt2e(restored))
    converted.eval()  # the patched eval() returns None, not the model
    return converted
