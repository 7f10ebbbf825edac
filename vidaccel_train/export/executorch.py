"""Lowering deploy-form models to XNNPACK-delegated ExecuTorch programs, and running them."""

from __future__ import annotations

import collections
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# Graph plumbing that stays outside a delegate in any lowered program.
_PLUMBING = {"executorch_call_delegate", "getitem"}


class LoweringError(RuntimeError):
    """The program could not be lowered or does not run wholly inside XNNPACK."""


@dataclass
class LoweredProgram:
    buffer: bytes
    # Operators left to the portable runtime, by name and count (empty when fully delegated).
    undelegated: dict[str, int] = field(default_factory=dict)
    delegate_calls: int = 0


def _op_name(target) -> str:
    """``aten.convolution.default`` -> ``convolution``; Python callables by their name."""
    name = getattr(target, "__name__", None) or str(target)
    return name.split(".")[1] if name.startswith("aten.") else name


def lower_to_executorch(model: nn.Module, example: torch.Tensor, require_full_delegation: bool = True) -> LoweredProgram:
    """Export ``model`` at the example's (static) shape and lower it with the XNNPACK partitioner.

    ``model`` may be an eval-mode ``nn.Module`` or an already quantized (PT2E-converted)
    ``GraphModule``. With ``require_full_delegation`` any operator left outside XNNPACK is an
    error naming it, because the portable runtime cannot run 5-D convolutions or 3-D pooling.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        exported = torch.export.export(model, (example,))
    # Provenance records ("from_node") of the export, quantization and conversion passes: every
    # lowering pass deep-copies each node's record again, 9% of the lowering time of X3D-XS int8.
    for node in exported.graph.nodes:
        node.meta.pop("from_node", None)
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    graph = edge.exported_program().graph_module.graph
    calls = [node for node in graph.nodes if node.op == "call_function"]
    undelegated = collections.Counter(
        _op_name(node.target) for node in calls if _op_name(node.target) not in _PLUMBING
    )
    delegate_calls = sum(1 for node in calls if _op_name(node.target) == "executorch_call_delegate")
    if require_full_delegation and undelegated:
        raise LoweringError(
            "operators not delegated to XNNPACK: "
            + ", ".join(f"{name} x{count}" for name, count in sorted(undelegated.items()))
            + ". Convert the model with vidaccel_train.models.deploy.to_deploy_form first."
        )
    return LoweredProgram(edge.to_executorch().buffer, dict(undelegated), delegate_calls)


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file beside ``path`` and rename it into place: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


class ExecuTorchModel:
    """A ``.pte`` loaded through ``executorch.runtime``, called like a module on one tensor."""

    def __init__(self, path: str | Path):
        from executorch.runtime import Runtime

        self.path = Path(path)
        try:
            program = Runtime.get().load_program(self.path)
            self.method = program.load_method("forward")
        except Exception as err:  # the runtime raises RuntimeError/ValueError with an error code
            raise LoweringError(f"{self.path}: ExecuTorch could not load the program ({err})") from err

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.execute([x.contiguous()])[0]
