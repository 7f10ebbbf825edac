"""The x86 program: the 3-D form, quantized by NNCF for OpenVINO, lowered to an ExecuTorch
program delegated to OpenVINO (ExecuTorch's OpenVINO backend, which the executorch wheel ships).

Why this route (measured, docs/benchmarks.md "The x86 program"): on x86 OpenVINO's CPU plugin
runs the 3-D network (Conv3d) faster than any form XNNPACK can run, and OpenVINO is fastest on
int8 that OpenVINO's own quantizer (NNCF) placed; our deploy form, time folded into batch for
XNNPACK, is slow under OpenVINO, and the XNNPACK quantizer's int8 graph is slower
under OpenVINO than the XNNPACK program itself. The int8 numbers are NNCF's post-training
quantization of the run's float weights (a QAT run's included), checked against the quantized
model in PyTorch and against the test labels like every program.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
from collections.abc import Iterable

import torch
from torch import nn
from torch.fx import GraphModule

from vidaccel_train.errors import ConfigError, LoweringError
from vidaccel_train.export.executorch import LoweredProgram, _counted, delegation
from vidaccel_train.quiet import native_stderr_muted

log = logging.getLogger(__name__)

FORMAT = "executorch-openvino"
BACKEND = "OpenvinoBackend"
# NNCF's default statistics subset: at most this many calibration clips are used.
MAX_CLIPS = 300
# NNCF's symmetric int8 for weights and activations, OpenVINO's own CPU preset.
MODE = "INT8_SYM"


def check_available() -> None:
    """The x86 program can be made and run here: an x86-64 host, OpenVINO and NNCF installed,
    and ExecuTorch's runtime with its OpenVINO backend.

    Raises:
        ConfigError: naming what is missing and what to do.
    """
    import importlib.util

    from vidaccel_train.export.target import host_isa

    if host_isa() != "x86_64":
        raise ConfigError(
            f"callbacks.export.targets=[x86_64] makes and verifies the x86 program on an x86-64 machine; this one "
            f"is {host_isa()}: export it there, or leave x86_64 out"
        )
    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"callbacks.export.targets=[x86_64] needs {' and '.join(missing)}: "
            "pip install -e '.[x86]' (bash scripts/setup.sh installs it)"
        )
    from executorch.runtime import Runtime

    with native_stderr_muted():
        available = Runtime.get().backend_registry.is_available(BACKEND)
    if not available:
        raise ConfigError(
            f"callbacks.export.targets=[x86_64] needs ExecuTorch's {BACKEND}, which this executorch build "
            "lacks: install the executorch wheel from PyPI (bash scripts/setup.sh)"
        )


@contextlib.contextmanager
def _quiet():
    """NNCF's progress bars and the OpenVINO partitioner's per-operator prints go to the debug
    log; what importing NNCF prints (a tokenizer library's native line, torch's note that there
    is no CUDA) is muted."""
    out = io.StringIO()
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    extension_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(out), native_stderr_muted():
            import nncf  # noqa: F401  (its import is what prints)

            yield
    finally:
        extension_log.setLevel(level)
        for line in out.getvalue().splitlines():
            log.debug("openvino: %s", line)


class CalibrationClips:
    """The clips of the first ``count`` batches (``{"video": (B, C, T, H, W)}``), each a
    ``(1, C, T, H, W)`` float tensor (the program's batch-1 input), read from ``batches`` each
    time they are iterated: NNCF walks them more than once, and holding them all would cost
    about 10 MB a clip for X3D-M."""

    def __init__(self, batches: Iterable[dict], count: int):
        self.batches, self.count = batches, count

    def __iter__(self):
        for batch in itertools.islice(self.batches, self.count):
            for video in batch["video"]:
                yield video.unsqueeze(0).float()


def calibration_clips(batches: Iterable[dict], count: int) -> CalibrationClips:
    """:class:`CalibrationClips` of ``batches``.

    Raises:
        ValueError: the batches hold no clip.
    """
    clips = CalibrationClips(batches, count)
    if next(iter(clips), None) is None:
        raise ValueError("no calibration clips: the calibration batches are empty")
    return clips


class BatchOne:
    """A model exported for batch 1 (the x86 program's int8 model), called like the programs:
    on one clip ``(1, C, T, H, W)`` -> ``(1, classes)``. Not a module, so that the export's
    verification runs it view by view as it runs the programs."""

    def __init__(self, model: GraphModule):
        self.model = model

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(clip)


def quantize(model: nn.Module, example: torch.Tensor, clips: Iterable[torch.Tensor]) -> GraphModule:
    """NNCF's int8 (:data:`MODE`, fast bias correction) of ``model`` exported at the example's
    static shape ``(1, C, T, H, W)``, calibrated on up to :data:`MAX_CLIPS` of ``clips`` (a
    re-iterable of that shape): the int8 model the x86 program is lowered from and checked
    against (quantize/dequantize around float operators). OpenVINO's program is compiled for
    that one shape.

    Raises:
        torch.export and NNCF's errors for a model they cannot trace or quantize.
    """
    with torch.no_grad(), _quiet():
        import nncf
        from executorch.backends.openvino.quantizer import QuantizationMode, quantize_model

        nncf.set_log_level(logging.ERROR)
        captured = torch.export.export(model.eval(), (example,)).module()
        quantized = quantize_model(
            captured, clips, mode=QuantizationMode[MODE], subset_size=MAX_CLIPS, transform_fn=lambda clip: clip
        )
    return quantized


def describe(batches: int) -> str:
    """How the x86 program's int8 model came about, for the manifest."""
    return (
        f"NNCF {MODE} post-training quantization of the 3-D form, calibrated on the clips of {batches} training "
        f"batches (at most {MAX_CLIPS})"
    )


def lower_to_openvino(quantized: GraphModule, example: torch.Tensor) -> LoweredProgram:
    """``quantized`` as an ExecuTorch program whole delegated to OpenVINO's CPU plugin.

    Raises:
        LoweringError: an operator was left outside the OpenVINO delegate.
    """
    with torch.no_grad(), _quiet():
        from executorch.backends.openvino.partitioner import OpenvinoPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from executorch.exir.backend.backend_details import CompileSpec

        edge = to_edge_transform_and_lower(
            torch.export.export(quantized, (example,)),
            partitioner=[OpenvinoPartitioner([CompileSpec("device", b"CPU")])],
        )
        undelegated, delegate_calls = delegation(edge)
        if undelegated:
            raise LoweringError(f"operators not delegated to OpenVINO: {_counted(undelegated)}")
        buffer = edge.to_executorch().buffer
    return LoweredProgram(buffer, {}, delegate_calls)
