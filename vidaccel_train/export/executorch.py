"""Lowering deploy-form models to XNNPACK-delegated ExecuTorch programs (running them: :mod:`.runtime`)."""

from __future__ import annotations

import collections
import contextlib
import gc
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from vidaccel_train.errors import LoweringError

# Graph plumbing that stays outside a delegate in any lowered program.
_PLUMBING = {"executorch_call_delegate", "getitem"}


@dataclass
class LoweredProgram:
    buffer: bytes
    # Operators left to the portable runtime, by name and count (empty when fully delegated).
    undelegated: dict[str, int] = field(default_factory=dict)
    delegate_calls: int = 0


def _target_name(target) -> str:
    """``aten.convolution.default`` for an ATen or edge operator; Python callables by their name."""
    return getattr(target, "__name__", None) or str(target)


def _op_name(target) -> str:
    """``aten.convolution.default`` -> ``convolution``; Python callables by their name."""
    name = _target_name(target)
    return name.split(".")[1] if name.startswith("aten.") else name


def delegation(edge) -> tuple[dict[str, int], int]:
    """Of a lowered edge program: the operators left outside any delegate, by name and count,
    and how many delegate calls it makes."""
    names = [_op_name(node.target) for node in edge.exported_program().graph.nodes if node.op == "call_function"]
    undelegated = collections.Counter(name for name in names if name not in _PLUMBING)
    return dict(undelegated), names.count("executorch_call_delegate")


def _counted(operators: dict[str, int]) -> str:
    """``name xN, ...`` sorted by name, for an error."""
    return ", ".join(f"{name} x{count}" for name, count in sorted(operators.items()))


@contextlib.contextmanager
def _lowering_shortcuts():
    """Costs of lowering that do not change the program, left out (what each costs:
    docs/benchmarks.md, "The figures behind the code's choices"):

    - Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, under which every fake-tensor operation
      of every pass asks NVML for the GPU count (a failed ``dlopen`` per call without a GPU).
      The CUDA runtime's own answer is cached.
    - Each pass records a node's provenance as a deep copy of the provenance it came from, so the
      copies grow with every pass. Records are never changed once made; sharing them keeps the
      same information.
    - The passes make millions of short-lived objects; Python's collector would otherwise walk
      every object the process already holds (model, data, trainer) again and again. Those
      objects are frozen for the duration, unless the caller froze objects of its own
      (``gc.unfreeze`` would release theirs too).
    - XNNPACK's own pass manager runs 17 passes, each a walk and re-check of the whole program;
      ten only rewrite what a deploy form has none of (upsampling, attention, BatchNorm,
      concatenations of more than five tensors, max with indices, 1-D convolutions, PReLU,
      matrix products, custom metadata, dim-order copies) and are left out when the program has
      none of them.
    """
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from torch.fx.traceback import NodeSource

    nvml_check = os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    own_deepcopy = NodeSource.__dict__.get("__deepcopy__")
    NodeSource.__deepcopy__ = lambda self, memo: self
    stock_transform = XNNPACKPassManager.transform

    def transform(manager):
        needed = _xnnpack_passes_that_apply(manager.exported_program.graph)
        manager.passes = [p for p in manager.passes if needed(p.__name__)]
        return stock_transform(manager)

    XNNPACKPassManager.transform = transform
    thresholds = gc.get_threshold()
    freezing = gc.get_freeze_count() == 0
    if freezing:
        gc.freeze()
    gc.set_threshold(100_000, *thresholds[1:])
    try:
        yield
    finally:
        XNNPACKPassManager.transform = stock_transform
        gc.set_threshold(*thresholds)
        if freezing:
            gc.unfreeze()
        if own_deepcopy is None:
            del NodeSource.__deepcopy__
        else:
            NodeSource.__deepcopy__ = own_deepcopy
        if nvml_check is not None:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = nvml_check


def _xnnpack_passes_that_apply(graph):
    """Whether each of XNNPACK's passes, by name, can change ``graph``: false only for the passes
    whose every rewrite starts at something the graph does not have, an operator, an operator
    next to another, or node metadata (each checked against the pass's source, executorch 1.5;
    ``scripts/bench_lowering.py`` checks the program's bytes are the same). The graph is read
    once, before the first pass; no pass before a skipped one makes what it would rewrite."""
    calls = [node for node in graph.nodes if node.op == "call_function"]
    names = {_target_name(node.target) for node in calls}

    def has(*fragments: str) -> bool:
        return any(fragment in op for op in names for fragment in fragments)

    def is_view(node) -> bool:
        return (
            isinstance(node, torch.fx.Node) and node.op == "call_function" and "view_copy" in _target_name(node.target)
        )

    def linear_beside_a_view(node) -> bool:
        """A linear whose input is a view, or whose one user is: ExecuTorch's linear transform
        (``replace_linear_view_copy_input_output``) may drop those views."""
        users = list(node.users)
        return "linear" in _target_name(node.target) and (
            is_view(node.args[0]) or (len(users) == 1 and is_view(users[0]))
        )

    triggers = {
        "ConvertToUpsampleBilinear2d": has("upsample", "index"),
        "ConvertToSDPAPass": has("bmm", "softmax"),
        "FuseBatchNormPass": has("batch_norm"),
        "DecomposeBatchNorm": has("batch_norm"),
        # joins of more than five tensors
        "DecomposeConcatenate": any(
            "aten.cat" in _target_name(node.target) and len(node.args[0]) > 5 for node in calls
        ),
        "RemoveGetItemPass": has("max_pool2d_with_indices", "aten.max.dim"),
        "Conv1dUnsqueezePass": any(
            "convolution" in _target_name(node.target)
            and getattr(node.args[0], "meta", {}).get("val") is not None
            and node.args[0].meta["val"].dim() == 3
            for node in calls
        ),
        "PReLUReshapePass": has("prelu"),
        # these three retrace the whole program even when they change nothing
        "ConvertToLinearPass": has(".mm.", "addmm", "bmm") or any(linear_beside_a_view(node) for node in calls),
        "PropagateCustomMetaPass": any("custom" in node.meta for node in graph.nodes),
        "DimOrderOpsRevertPass": has("dim_order"),
    }
    return lambda name: triggers.get(name, True)


def _convolutions_in_core_aten(exported) -> None:
    """Write each ``aten.conv2d`` of ``exported`` as the ``aten.convolution`` it decomposes to.

    ``torch.export`` keeps ``conv2d``, which is in ExecuTorch's decomposition table; its one
    operator there makes ``to_edge_transform_and_lower`` retrace the whole program a second time
    to decompose it. Written as its decomposition,
    nothing is left to decompose and that retrace is skipped; the program's bytes are the same.
    """
    aten = torch.ops.aten
    defaults = (None, [1, 1], [0, 0], [1, 1], 1)  # bias, stride, padding, dilation, groups
    changed = False
    for node in exported.graph.nodes:
        if node.op != "call_function" or node.target is not aten.conv2d.default or node.kwargs:
            continue
        value = node.args[0].meta.get("val")
        if not (isinstance(value, torch.Tensor) and value.dim() == 4):
            continue  # an unbatched conv2d decomposes to unsqueeze, convolution, squeeze
        x, weight, *given = node.args
        bias, stride, padding, dilation, groups = (*given, *defaults[len(given) :])
        node.target = aten.convolution.default
        node.args = (x, weight, bias, stride, padding, dilation, False, [0, 0], groups)
        changed = True
    if changed:
        exported.graph_module.recompile()


def _partitioner():
    """XNNPACK's partitioner, minus two of three decomposition passes where they change nothing.

    The stock partitioner always hands ExecuTorch a filter for the operators it keeps whole
    (linear and the like), which costs two extra ``run_decompositions`` of the whole program.
    When every such operator in the program passes the filter, keeping them all
    without it gives the same program.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    class Partitioner(XnnpackPartitioner):
        def ops_to_not_decompose(self, ep):
            kept, keep = super().ops_to_not_decompose(ep)
            targets = set(kept)
            nodes = (node for node in ep.graph.nodes if node.op == "call_function" and node.target in targets)
            return (kept, None) if all(keep(node) for node in nodes) else (kept, keep)

    return Partitioner()


def lower_to_executorch(
    model: nn.Module, example: torch.Tensor, require_full_delegation: bool = True, shortcuts: bool = True
) -> LoweredProgram:
    """Export ``model`` at the example's (static) shape and lower it with the XNNPACK partitioner.

    ``model`` may be an eval-mode ``nn.Module`` or an already quantized (PT2E-converted)
    ``GraphModule``. With ``require_full_delegation`` any operator left outside XNNPACK is an
    error naming it, because the portable runtime cannot run 5-D convolutions or 3-D pooling.
    ``shortcuts`` skips work that does not change the program (the same bytes; see
    :func:`_lowering_shortcuts`, :func:`_convolutions_in_core_aten`, :func:`_partitioner`) and
    ExecuTorch's edge-dialect verifier, which the delegation check here and the numerical check
    of every exported program replace.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if shortcuts:
            stack.enter_context(_lowering_shortcuts())
        exported = torch.export.export(model, (example,))
        # Provenance records ("from_node") of the export, quantization and conversion passes: every
        # lowering pass deep-copies each node's record again.
        for node in exported.graph.nodes:
            node.meta.pop("from_node", None)
        if shortcuts:
            _convolutions_in_core_aten(exported)
        edge = to_edge_transform_and_lower(
            exported,
            partitioner=[_partitioner() if shortcuts else XnnpackPartitioner()],
            compile_config=EdgeCompileConfig(_check_ir_validity=not shortcuts),
        )
        undelegated, delegate_calls = delegation(edge)
        if require_full_delegation and undelegated:
            raise LoweringError(
                f"operators not delegated to XNNPACK: {_counted(undelegated)}. "
                "Convert the model with vidaccel_train.models.deploy.to_deploy_form first."
            )
        return LoweredProgram(edge.to_executorch().buffer, undelegated, delegate_calls)
