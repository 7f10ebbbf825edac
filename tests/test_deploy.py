"""The deploy form equals the train form, has no 3-D operator, and lowers whole to XNNPACK."""

import pytest
import torch
from pytorchvideo.layers.accelerator.mobile_cpu.attention import SqueezeExcitation
from pytorchvideo.layers.accelerator.mobile_cpu.convolutions import (
    Conv3d3x3x3DwBnAct,
    Conv3d5x1x1BnAct,
    Conv3dPwBnAct,
    Conv3dTemporalKernel1BnAct,
)
from pytorchvideo.layers.accelerator.mobile_cpu.pool import AdaptiveAvgPool3dOutSize1
from pytorchvideo.models.accelerator.mobile_cpu.residual_blocks import X3dBottleneckBlock
from torch import nn

from vidaccel_train.errors import ArtifactError, LoweringError
from vidaccel_train.export import ExecuTorchModel, lower_to_executorch
from vidaccel_train.files import write_atomic
from vidaccel_train.models import create_model
from vidaccel_train.models.deploy import (
    REVISION,
    REVISIONS,
    ClipSqueezeExcite,
    FoldTime,
    TemporalConv,
    UnsupportedBlockError,
    to_deploy_form,
)
from vidaccel_train.models.zoo import ZOO


def _randomise_norms(model: nn.Module) -> nn.Module:
    """Trained-looking BatchNorm statistics and affine terms, so folding them is exercised."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for tensor, low, high in (
                (module.running_mean, -0.3, 0.3),
                (module.running_var, 0.5, 1.5),
                (module.weight.data, 0.5, 1.5),
                (module.bias.data, -0.3, 0.3),
            ):
                tensor.copy_(torch.empty_like(tensor).uniform_(low, high, generator=generator))
    return model.eval()


@pytest.mark.parametrize("name", sorted(ZOO))
def test_the_3d_form_of_a_deploy_form_is_the_same_network_with_conv3d_back(name):
    """The x86 program's network: the deploy form's own weights, stacked back into Conv3d."""
    from vidaccel_train.models.conv3d_form import to_conv3d_form

    torch.manual_seed(0)
    frames = ZOO[name].num_frames
    model = _randomise_norms(create_model(name, num_classes=11))
    deployed = to_deploy_form(model, frames)
    with torch.no_grad():
        for conv in (m for m in deployed.modules() if isinstance(m, nn.Conv2d)):
            conv.weight.add_(0.01 * torch.randn_like(conv.weight))  # weights a QAT run moved: not the train form's
    volume = to_conv3d_form(deployed)
    for batch in (1, 3):
        clip = torch.randn(batch, 3, frames, 48, 48)
        with torch.no_grad():
            assert (volume(clip) - deployed(clip)).abs().max() <= 1e-4, (name, batch)
    convs = [m for m in volume.modules() if isinstance(m, nn.Conv3d)]
    assert convs and not any(isinstance(m, (nn.Conv2d, nn.BatchNorm3d)) for m in volume.modules())
    assert max(conv.kernel_size[0] for conv in convs) > 1  # temporal kernels stacked back
    with pytest.raises(UnsupportedBlockError, match="no 3-D form for .*GRU"):
        to_conv3d_form(nn.Sequential(nn.GRU(2, 2)))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_deploy_form_equals_train_form_for_every_zoo_model_at_any_batch(name):
    torch.manual_seed(0)
    frames = ZOO[name].num_frames
    model = _randomise_norms(create_model(name, num_classes=11))
    deployed = to_deploy_form(model, frames)
    for batch in (1, 3):
        clip = torch.randn(batch, 3, frames, 48, 48)
        with torch.no_grad():
            assert (deployed(clip) - model(clip)).abs().max() <= 1e-4, (name, batch)
    assert not any(
        isinstance(m, (nn.Conv3d, nn.BatchNorm3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d)) for m in deployed.modules()
    )


BLOCKS = {
    "pointwise": lambda: Conv3dPwBnAct(8, 12, activation="relu"),
    "pointwise_swish": lambda: Conv3dPwBnAct(8, 8, activation="swish"),
    "depthwise_3x3x3": lambda: Conv3d3x3x3DwBnAct(8, activation="hswish"),
    "depthwise_3x3x3_stride2": lambda: Conv3d3x3x3DwBnAct(8, spatial_stride=2, activation="identity"),
    "temporal_5x1x1": lambda: Conv3d5x1x1BnAct(8, 8, groups=8, activation="relu"),
    "stem_1x3x3": lambda: Conv3dTemporalKernel1BnAct(
        8, 16, spatial_kernel=3, spatial_stride=2, spatial_padding=1, use_bn=False, activation="identity"
    ),
    "squeeze_excite": lambda: SqueezeExcitation(8, 4, is_3d=True),
    "bottleneck_projected": lambda: X3dBottleneckBlock(
        8, 20, 12, spatial_stride=2, se_ratio=0.25, act_functions=("relu", "swish", "relu")
    ),
    "bottleneck_identity": lambda: X3dBottleneckBlock(
        8, 20, 8, se_ratio=0, act_functions=("hswish", "relu", "identity")
    ),
    "bottleneck_no_residual": lambda: X3dBottleneckBlock(8, 20, 8, use_residual=False),
    "conv3d": lambda: nn.Conv3d(8, 6, (3, 3, 3), padding=1),
}


@pytest.mark.parametrize("revision", REVISIONS)
@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_every_block_deploys_to_the_same_numbers(block, revision):
    torch.manual_seed(1)
    frames = 5
    train_form = _randomise_norms(BLOCKS[block]())
    deployed = to_deploy_form(train_form, frames, revision)
    for batch in (1, 3):
        clip = torch.randn(batch, 8, frames, 14, 14)
        with torch.no_grad():
            expected = train_form(clip)
            folded = deployed(FoldTime()(clip))
        _, channels, height, width = folded.shape
        unfolded = folded.reshape(frames, batch, channels, height, width).permute(1, 2, 0, 3, 4)
        assert (unfolded - expected).abs().max() <= 1e-4, (block, batch)


def _operators(graph) -> list:
    return [node for node in graph.nodes if node.op == "call_function"]


def test_temporal_convolutions_pad_once_and_make_zeros_without_a_product():
    """Revision 2: one join per temporal convolution (its padded clip), zeros from a clamp to
    [0, 0]; no product with 0.0, which XNNPACK ran as a Multiply between two transposes."""
    model = create_model("x3d_xs", num_classes=5)
    assert REVISION == 2
    example = (torch.randn(2, 3, 4, 32, 32),)
    graphs = {r: torch.export.export(to_deploy_form(model, 4, r), example).graph for r in REVISIONS}
    temporal = [m for m in to_deploy_form(model, 4).modules() if isinstance(m, TemporalConv) and m.temporal_padding]
    side_taps = sum(min(m.temporal_padding, 3) * 2 for m in temporal)
    ops = {r: [str(n.target) for n in _operators(g)] for r, g in graphs.items()}
    assert ops[2].count("aten.cat.default") == len(temporal) == 27
    excites = [m for m in to_deploy_form(model, 4).modules() if isinstance(m, ClipSqueezeExcite)]
    assert ops[2].count("aten.hardtanh.default") == len(temporal) + len(excites) == 27 + 15
    products = [n for n in _operators(graphs[2]) if n.target == torch.ops.aten.mul.Tensor]
    assert not [n for n in products if 0.0 in n.args or 0 in n.args]
    assert ops[1].count("aten.cat.default") == side_taps and ops[1].count("aten.mul.Tensor") > len(products) + side_taps
    assert len(ops[2]) < len(ops[1]) - 2 * len(temporal)
    with pytest.raises(ValueError, match="revision must be one of"):
        to_deploy_form(model, 4, revision=3)


def test_nothing_after_the_entry_is_five_dimensional(tiny_pair):
    """A 5-D view costs XNNPACK two full-size transposes; the deploy form keeps to 4-D."""
    _, deployed = tiny_pair
    graph = torch.export.export(deployed, (torch.randn(2, 3, 4, 56, 56),)).graph
    entry = [node for node in graph.nodes if node.op == "placeholder"][-1]  # the clip (after the weights)
    five_d = [
        node.name
        for node in graph.nodes
        if node.op == "call_function" and node.args and node.args[0] is not entry and node.meta["val"].dim() == 5
    ]
    assert five_d == []


def test_clip_pool_is_a_mean_over_time_and_space():
    clip = torch.randn(3, 8, 5, 7, 7)
    pooled = to_deploy_form(AdaptiveAvgPool3dOutSize1(), 5)(FoldTime()(clip))
    assert (pooled - clip.mean(dim=(2, 3, 4), keepdim=True)[..., 0]).abs().max() <= 1e-6


def test_blocks_without_a_deploy_form_are_named():
    with pytest.raises(UnsupportedBlockError, match="LSTM"):
        to_deploy_form(nn.Sequential(nn.LSTM(4, 4)), 4)
    with pytest.raises(UnsupportedBlockError, match="temporal stride"):
        to_deploy_form(nn.Conv3d(4, 4, 3, stride=2, padding=1), 4)


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(2)
    model = _randomise_norms(create_model("x3d_tiny", num_classes=5))
    return model, to_deploy_form(model, 4)


def test_tiny_deploy_form_lowers_whole_to_xnnpack_and_runs_in_executorch(tiny_pair, tmp_path):
    model, deployed = tiny_pair
    clip = torch.randn(1, 3, 4, 56, 56)
    lowered = lower_to_executorch(deployed, clip)
    assert lowered.undelegated == {} and lowered.delegate_calls >= 1
    program = ExecuTorchModel(write_atomic(tmp_path / "tiny.pte", lowered.buffer))
    with torch.no_grad():
        assert (program(clip) - model(clip)).abs().max() <= 1e-4


@pytest.mark.slow
def test_lowering_shortcuts_write_the_same_program_byte_for_byte_and_leave_nothing_changed(tiny_pair, monkeypatch):
    """The shortcuts only skip work: an int8 program (whose operators XNNPACK keeps whole) comes out
    identical to stock ExecuTorch's, and the process is left as it was found."""
    import os

    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from torch.fx.traceback import NodeSource

    from vidaccel_train.quantization import pt2e

    stock_transform = XNNPACKPassManager.transform
    model, _ = tiny_pair
    prepared = pt2e.prepare(model, (3, 4, 32, 32), "ptq")
    pt2e.calibrate(prepared, [{"video": torch.randn(2, 3, 4, 32, 32)} for _ in range(2)], 2)
    int8 = pt2e.convert_int8(prepared)
    clip = torch.randn(1, 3, 4, 32, 32)
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # as Lightning sets it
    fast = lower_to_executorch(int8, clip)
    stock = lower_to_executorch(int8, clip, shortcuts=False)
    assert fast.undelegated == {} and fast.buffer == stock.buffer
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1" and "__deepcopy__" not in NodeSource.__dict__
    assert XNNPACKPassManager.transform is stock_transform  # every pass runs again outside the shortcuts


def test_a_deploy_form_leaves_executorch_nothing_to_decompose_after_functionalization(tiny_pair):
    """ExecuTorch retraces the whole program a second time when any operator of its decomposition
    table is left after functionalization (the partitioner's kept operators aside): written in
    core ATen, a deploy form has none, and lowers the same (its output checked against the model)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir.program._program import _default_decomposition_table

    from vidaccel_train.export.executorch import _convolutions_in_core_aten

    model, deployed = tiny_pair
    clip = torch.randn(1, 3, 4, 32, 32)
    exported = torch.export.export(deployed.eval(), (clip,))
    table = _default_decomposition_table()
    ops = lambda program: {n.target for n in program.graph.nodes if n.op == "call_function"}  # noqa: E731
    assert torch.ops.aten.conv2d.default in ops(exported.run_decompositions({}))  # what torch.export writes
    _convolutions_in_core_aten(exported)
    functional = exported.run_decompositions({})
    kept, _ = XnnpackPartitioner().ops_to_not_decompose(functional)
    assert {op for op in ops(functional) if op in table} - set(kept) == set()
    with torch.no_grad():
        assert (exported.module()(clip) - model(clip)).abs().max() <= 1e-4


def test_xnnpack_passes_are_left_out_only_when_they_have_nothing_to_rewrite():
    """Graphs of edge operators as XNNPACK's pass manager sees them: a linear kept whole is left
    alone, but one beside a view, a matrix product or custom metadata brings its pass back."""
    from executorch.exir.dialects._ops import ops as exir_ops

    from vidaccel_train.export.executorch import _xnnpack_passes_that_apply

    edge = exir_ops.edge.aten

    def graph(*steps, custom=False):
        g = torch.fx.Graph()
        x = g.placeholder("x")
        w = g.placeholder("w")
        for op, *extra in steps:
            x = g.call_function(op, (x, w) if op in (edge.linear.default, edge.mm.default) else (x, *extra))
        if custom:
            x.meta["custom"] = {"tag": 1}
        g.output(x)
        return _xnnpack_passes_that_apply(g)

    plain = graph((edge.linear.default,), (edge.relu.default,))
    assert not plain("ConvertToLinearPass") and not plain("PropagateCustomMetaPass")
    assert not plain("DimOrderOpsRevertPass") and plain("ChannelsLastTaggedReshapePass")
    assert graph((edge.linear.default,), (edge.view_copy.default, [1, 4]))("ConvertToLinearPass")
    assert graph((edge.view_copy.default, [1, 4]), (edge.linear.default,))("ConvertToLinearPass")
    assert graph((edge.mm.default,))("ConvertToLinearPass")
    assert graph((edge.relu.default,), custom=True)("PropagateCustomMetaPass")


def test_only_batched_conv2d_is_written_as_convolution():
    """An unbatched conv2d decomposes to unsqueeze, convolution, squeeze: it is left to ExecuTorch."""
    from vidaccel_train.export.executorch import _convolutions_in_core_aten

    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1).eval()
    for clip, expected in ((torch.randn(1, 3, 8, 8), torch.ops.aten.convolution.default), (torch.randn(3, 8, 8), None)):
        exported = torch.export.export(conv, (clip,))
        _convolutions_in_core_aten(exported)
        targets = {n.target for n in exported.graph.nodes if n.op == "call_function"}
        assert targets == {expected or torch.ops.aten.conv2d.default}
        with torch.no_grad():
            assert torch.equal(exported.module()(clip), conv(clip))


def test_lowering_shortcuts_leave_the_collector_as_found():
    """Objects are frozen away from the collector while lowering and released after, but what
    the caller froze itself stays frozen."""
    import gc

    from vidaccel_train.export.executorch import _lowering_shortcuts

    thresholds = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with _lowering_shortcuts():
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] > thresholds[0]
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == thresholds
    gc.freeze()
    try:
        callers = gc.get_freeze_count()
        with _lowering_shortcuts():
            pass
        # Still frozen (an unfreeze would leave none; a frozen object that another thread frees
        # meanwhile leaves the count a little lower).
        assert gc.get_freeze_count() > callers // 2 and gc.get_threshold() == thresholds
    finally:
        gc.unfreeze()


def test_the_train_form_does_not_lower_and_the_error_names_the_operators(tiny_pair):
    model, _ = tiny_pair
    with pytest.raises(LoweringError, match="convolution"):
        lower_to_executorch(model, torch.randn(1, 3, 4, 56, 56))


def test_full_size_x3d_xs_lowers_whole_and_matches_in_executorch(tmp_path):
    torch.manual_seed(3)
    model = _randomise_norms(create_model("x3d_xs", num_classes=400))
    clip = torch.randn(1, 3, 4, 160, 160)
    lowered = lower_to_executorch(to_deploy_form(model, 4), clip)
    assert lowered.undelegated == {}
    program = ExecuTorchModel(write_atomic(tmp_path / "x3d_xs_fp32.pte", lowered.buffer))
    with torch.no_grad():
        assert (program(clip) - model(clip)).abs().max() <= 1e-4


def test_a_damaged_program_is_refused_with_its_path(tmp_path):
    broken = tmp_path / "broken.pte"
    broken.write_bytes(b"not a program")
    with pytest.raises(ArtifactError, match="broken.pte"):
        ExecuTorchModel(broken)


def test_transmuted_vanilla_x3d_computes_the_same_with_efficient_blocks():
    import copy

    from pytorchvideo.models.x3d import create_x3d

    from vidaccel_train.models.transmute import transmute

    torch.manual_seed(4)
    vanilla = _randomise_norms(
        create_x3d(input_clip_length=4, input_crop_size=64, model_num_class=10, head_activation=None)
    )
    original = copy.deepcopy(vanilla)
    convs_before = [name for name, m in original.named_modules() if isinstance(m, nn.Conv3d)]
    swapped = transmute(vanilla)
    assert {"Conv3dPwBnAct", "Conv3d3x3x3DwBnAct", "Conv3d5x1x1BnAct", "Conv3dTemporalKernel1BnAct"} <= set(swapped)
    # Every Conv3d now sits inside an efficient block, one block per original layer.
    loose = [
        name for name, m in vanilla.named_modules() if isinstance(m, nn.Conv3d) and not name.endswith("kernel.conv")
    ]
    assert loose == []
    assert sum(swapped.values()) == len(convs_before)
    clip = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        assert (vanilla(clip) - original(clip)).abs().max() <= 1e-4
