"""QAT and PTQ on generated data through the real pipeline."""

import copy
import functools
import json

import pytest
import torch

from vidaccel_train.errors import ConfigError
from vidaccel_train.train import run

from support import TINY_FIT, compose_config

QAT_RUN = [
    *TINY_FIT,
    "quant=qat",
    "quant.start_epoch=1",
    "quant.freeze_observer_epoch=2",
    "trainer.max_epochs=4",
    "optim=adamw",
]


def _observer_ranges(state_dict):
    """Every observer's (min, max) in a checkpoint's state_dict."""
    return {
        k: (v, state_dict[k.removesuffix("min_val") + "max_val"])
        for k, v in state_dict.items()
        if k.endswith(".min_val")
    }


def _last_state(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_qat_switches_at_its_epoch_and_checkpoints_the_quantized_graph(tmp_path, data_dir):
    metrics = run(compose_config(tmp_path, data_dir, QAT_RUN))
    assert {"val_fp32/top1", "test/top1", "test_fp32/top1"} <= set(metrics)
    ckpt = _last_state(tmp_path)
    assert ckpt["quantization"]["mode"] == "qat" and ckpt["quantization"]["observers_frozen"]
    assert ckpt["quantization"]["input_shape"] == [3, 4, 32, 32]
    assert not any("kernel.conv" in key for key in ckpt["state_dict"])  # the deploy form was trained
    assert any("activation_post_process" in key for key in ckpt["state_dict"])
    with open(tmp_path / "csv" / "metrics.csv") as log:
        header = log.readline()
    assert "val_fp32/top1" in header


@pytest.mark.slow
def test_resuming_mid_qat_ends_exactly_as_an_unstopped_run(tmp_path, data_dir):
    unstopped = tmp_path / "unstopped"
    stopped = tmp_path / "stopped"
    expected = run(compose_config(unstopped, data_dir, QAT_RUN))
    # Cut off after epoch 2 (inside QAT, observers just frozen), then resume from last.ckpt.
    run(
        compose_config(
            stopped,
            data_dir,
            [
                *QAT_RUN,
                "+callbacks.stop._target_=support.callbacks.StopAfterEpoch",
                "+callbacks.stop.epoch=2",
                "test=false",
            ],
        )
    )
    assert _last_state(stopped)["epoch"] == 2
    resumed = run(compose_config(stopped, data_dir, [*QAT_RUN, "ckpt_path=last"]))
    for key in ("test/top1", "test/loss", "test_fp32/loss", "val/loss"):
        assert resumed[key] == pytest.approx(expected[key], abs=1e-6), key
    final, reference = _last_state(stopped)["state_dict"], _last_state(unstopped)["state_dict"]
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_qat_from_the_first_epoch_observes_its_ranges_and_tests_int8(tmp_path, data_dir, start_weights):
    observed = tmp_path / "observers.txt"
    metrics = run(
        compose_config(
            tmp_path,
            data_dir,
            [
                *QAT_RUN,
                "quant.start_epoch=0",
                "trainer.max_epochs=3",
                f"model.checkpoint={start_weights}",
                "+callbacks.observers._target_=support.callbacks.RecordObservers",
                f"+callbacks.observers.path={observed}",
            ],
        )
    )
    assert {"test/top1", "test_fp32/top1"} <= set(metrics)  # the int8 conversion needs observed ranges
    ranges = _observer_ranges(_last_state(tmp_path)["state_dict"])
    assert len(ranges) > 50
    assert all(
        torch.isfinite(low).all() and torch.isfinite(high).all() and (low <= high).all()
        for low, high in ranges.values()
    )
    # Observers learn in every QAT epoch before freeze_observer_epoch (=2), validation between them
    # included, and stop from then on.
    rows = [tuple(map(int, line.split())) for line in observed.read_text().splitlines()]
    assert {(epoch, observing) for epoch, _, observing in rows} == {(0, 1), (1, 1), (2, 0)}


def test_qat_that_would_never_start_is_refused_before_training(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="quant.start_epoch=9 but trainer.max_epochs=4: QAT would never run"):
        run(compose_config(tmp_path, data_dir, [*QAT_RUN, "quant.start_epoch=9", "quant.freeze_observer_epoch=null"]))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"start_epoch": 12},
            "quant.start_epoch=12 but trainer.max_epochs=12: QAT would never run; set quant.start_epoch below 12",
        ),
        ({"start_epoch": 0}, "quant.start_epoch=0 starts QAT at the first epoch on untrained weights"),
        (
            {"start_epoch": -12},
            "quant.start_epoch=-12 with trainer.max_epochs=12 starts QAT at the first epoch on untrained",
        ),
        (
            {"start_epoch": -40},
            "quant.start_epoch=-40 with trainer.max_epochs=12 starts QAT at the first epoch on untrained",
        ),
        (
            {"start_epoch": 11, "freeze_observer_epoch": 10},
            "quant.freeze_observer_epoch=10 comes before QAT starts (epoch 11)",
        ),
        (
            {"start_epoch": -2, "freeze_observer_epoch": 9},
            "quant.freeze_observer_epoch=9 comes before QAT starts (epoch 10)",
        ),
        ({"lr_scale": 0.0}, "quant.lr_scale must be a positive number, got 0.0"),
        ({"lr_scale": "0.1"}, "quant.lr_scale must be a positive number, got '0.1'"),
        ({"start_epoch": 1.5}, "quant.start_epoch must be an integer epoch (-1: the last), got 1.5"),
        ({"start_epoch": True}, "quant.start_epoch must be an integer epoch (-1: the last), got True"),
        ({"freeze_observer_epoch": "3"}, "quant.freeze_observer_epoch must be an integer epoch or null, got '3'"),
        ({"freeze_observer_epoch": False}, "quant.freeze_observer_epoch must be an integer epoch or null, got False"),
        (
            {"max_epochs": 0},
            "quant.max_epochs must be a positive integer (trainer.max_epochs, which qat.yaml passes on), got 0",
        ),
        (
            {"max_epochs": True},
            "quant.max_epochs must be a positive integer (trainer.max_epochs, which qat.yaml passes on), got True",
        ),
        ({"trained_weights": "yes"}, "quant.trained_weights must be true or false, got 'yes'"),
    ],
)
def test_the_qat_callback_refuses_a_schedule_that_cannot_work_when_built(settings, message):
    """The callback owns its schedule: built with the run's epochs (12 here) and untrained weights."""
    from vidaccel_train.training import QuantizationAwareTraining

    with pytest.raises(ConfigError) as refused:
        QuantizationAwareTraining(**{"start_epoch": -1, "max_epochs": 12, **settings})
    assert message in str(refused.value) and "\n" not in str(refused.value)
    if "untrained" in message:  # the measurements live in the docs, which the message names
        assert "measured" not in str(refused.value) and "docs/quantization-and-export.md" in str(refused.value)


def test_the_qat_callback_resolves_its_start_and_lets_one_epoch_runs_start_untrained():
    from vidaccel_train.training import QuantizationAwareTraining

    assert QuantizationAwareTraining(start_epoch=-1, max_epochs=12).start_epoch == 11
    assert QuantizationAwareTraining(start_epoch=-3, max_epochs=12, freeze_observer_epoch=9).start_epoch == 9
    assert QuantizationAwareTraining(start_epoch=0, max_epochs=12, trained_weights=True).start_epoch == 0
    assert QuantizationAwareTraining(start_epoch=-1, max_epochs=1).start_epoch == 0  # trainer=debug, debug=*
    assert QuantizationAwareTraining(start_epoch=0, max_epochs=1).start_epoch == 0


def test_the_schedule_inputs_of_qat_do_not_fix_a_checkpoint_to_its_epochs(tmp_path, data_dir):
    """A resumed run takes the epochs given now, and a checkpoint written before the callback got
    its epochs from the config still matches its run."""
    from omegaconf import OmegaConf

    from vidaccel_train.training.resilience import compare_with_checkpoint

    def resolved(overrides):
        return OmegaConf.to_container(compose_config(tmp_path, data_dir, [*QAT_RUN, *overrides]), resolve=True)

    assert compare_with_checkpoint(resolved([]), resolved(["trainer.max_epochs=6"])) == ["trainer.max_epochs: 4 -> 6"]
    older = resolved([])
    for key in ("max_epochs", "trained_weights"):
        del older["quant"][key]
    assert compare_with_checkpoint(older, resolved([])) == []


def test_ptq_calibrates_the_tested_checkpoint_and_tests_int8(tmp_path, data_dir):
    metrics = run(
        compose_config(
            tmp_path, data_dir, [*TINY_FIT, "quant=ptq", "quant.calibration_batches=2", "trainer.max_epochs=1"]
        )
    )
    assert {"test/top1", "test_fp32/top1"} <= set(metrics)
    assert "val_fp32/top1" not in metrics  # fp32 fit, quantized only for the test
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metrics"]["test/top1"] == metrics["test/top1"]


@pytest.mark.slow
def test_qat_fine_tune_of_an_earlier_checkpoint_on_a_new_label_set_exports_int8(tmp_path, data_dir, caplog):
    """The zoo use case on tiny shapes: weights trained on four motions, a new head for two others,
    QAT from the first epoch, the int8 test and the export."""
    pretrain, finetune = tmp_path / "pretrain", tmp_path / "finetune"
    run(compose_config(pretrain, data_dir, [*TINY_FIT, "trainer.max_epochs=1", "test=false"]))
    metrics = run(
        compose_config(
            finetune,
            data_dir,
            [
                *TINY_FIT,
                f"model.checkpoint={pretrain / 'checkpoints' / 'last.ckpt'}",
                "data.synthetic.classes=[rotate_cw,rotate_ccw]",
                "quant=qat",
                "quant.start_epoch=0",
                "trainer.max_epochs=2",
                "optim=adamw",
                "callbacks.export.enabled=true",
                "callbacks.export.latency_repeats=2",
            ],
        )
    )
    assert {"test/top1", "test_fp32/top1"} <= set(metrics)
    manifest = json.loads((finetune / "export" / "manifest.json").read_text())
    assert manifest["classes"] == ["rotate_cw", "rotate_ccw"]
    assert {a["precision"] for a in manifest["artifacts"]} == {"int8"}  # the default callbacks.export.precisions
    # Everything but the classifier came from the earlier run; the classifier is new (other classes).
    assert "new label set: left projection.model.weight, projection.model.bias freshly initialised" in caplog.text
    assert _last_state(finetune)["quantization"]["start_step"] == 0


@pytest.mark.parametrize(
    "observing, fake_quantizing",
    [
        (True, True),
        pytest.param(False, True, marks=pytest.mark.slow),
        pytest.param(True, False, marks=pytest.mark.slow),
    ],
)
def test_vectorised_fake_quantization_gives_the_stock_values_gradients_and_ranges(observing, fake_quantizing):
    from vidaccel_train.models import create_model
    from vidaccel_train.quantization import pt2e
    from vidaccel_train.quantization.fake_quant import VectorisedFakeQuantize, vectorise_fake_quantize

    torch.manual_seed(0)
    shape = (3, 4, 32, 32)
    # torchao's QAT step for step: every quantizer call requantizes, moved values too.
    fast = pt2e.prepare(create_model("x3d_xs", num_classes=5).eval(), shape, "qat", requantize_moved_values=True)
    fast.train()
    vectorised = [m for m in fast.modules() if isinstance(m, VectorisedFakeQuantize)]
    assert len(vectorised) > 100  # every activation of the deploy form; weights (per channel) stay stock
    stock = vectorise_fake_quantize(copy.deepcopy(fast), enabled=False)
    assert not any(isinstance(m, VectorisedFakeQuantize) for m in stock.modules())
    for model in (fast, stock):
        pt2e.set_observers(model, observing)
        pt2e.set_fake_quant(model, fake_quantizing)
    for step in range(3):  # ranges move between steps, and a fifth of the values lie outside them
        clip = torch.randn(2, *shape) * (1 + 2 * step)
        outputs = {}
        for name, model in (("fast", fast), ("stock", stock)):
            model.zero_grad()
            logits = model(clip)
            logits.square().sum().backward()
            outputs[name] = logits, {k: p.grad for k, p in model.named_parameters()}
        assert torch.equal(outputs["fast"][0], outputs["stock"][0])
        assert all(torch.equal(g, outputs["stock"][1][k]) for k, g in outputs["fast"][1].items())
        fast_state, stock_state = fast.state_dict(), stock.state_dict()
        assert fast_state.keys() == stock_state.keys()
        # With fake quantization off the stock op leaves scale and zero point uninitialised.
        compared = [k for k in fast_state if fake_quantizing or not k.endswith(("scale", "zero_point"))]
        assert all(torch.equal(fast_state[k], stock_state[k]) for k in compared)


@pytest.mark.parametrize("zero_point", [3, 4])  # odd and even ends of the shifted range
@pytest.mark.parametrize("channels_last", [False, True])
def test_vectorised_rounding_matches_the_stock_op_at_every_edge(zero_point, channels_last):
    """Values and straight-through gradients of the vectorised rounding against
    ``torch.fake_quantize_per_tensor_affine`` on levels exactly half-way between grid points
    (round half to even decides whether the range's ends are in), one ulp either side, far
    outside, and signed zeros; contiguous and channels-last. (A negative value that rounds to
    level 0 comes out as -0.0 here and +0.0 from the stock op: equal in every comparison and
    sum.)"""
    from vidaccel_train.quantization.fake_quant import _RoundToGrid

    scale, quant_min, quant_max = 0.25, -128, 127  # a power of two: x / scale is exact
    low, high = quant_min - zero_point, quant_max - zero_point
    levels = torch.tensor(
        [
            low - 1.0,
            low - 0.5,
            low,
            low + 0.5,
            -0.5,
            0.5,
            1.5,
            high - 0.5,
            high,
            high + 0.5,
            high + 1.0,
            1e30,
            -1e30,
            0.0,
            -0.0,
        ]
    )
    levels = torch.cat([levels, torch.nextafter(levels, levels + 1), torch.nextafter(levels, levels - 1)])
    x = (levels * scale).repeat(2, 3, 2, 1)  # (2, 3, 2, 45)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(x.shape)
    results = []
    for fake_quantize in (
        lambda t: _RoundToGrid.apply(t, scale, zero_point, quant_min, quant_max),
        lambda t: torch.fake_quantize_per_tensor_affine(t, scale, zero_point, quant_min, quant_max),
    ):
        leaf = x.clone().requires_grad_()
        out = fake_quantize(leaf)
        (out * upstream).sum().backward()
        results.append((out.detach(), leaf.grad))
    (fast, fast_grad), (stock, stock_grad) = results
    assert torch.equal(fast, stock)
    assert torch.equal(fast_grad, stock_grad)
    passed = stock_grad != 0
    assert 0 < passed.sum() < passed.numel()  # both ends cut, the middle passes


@pytest.mark.slow
def test_moved_values_pass_through_once_observed_and_give_the_same_int8_model():
    """By default QAT passes sliced, joined and zeroed values through instead of fake-quantizing
    them again: the quantizer a temporal convolution's padded clip shares observes once a step
    (torchao's QAT: six times), with
    frozen ranges the logits and gradients are bit for bit those of requantizing, and the int8
    model converted from either is the same."""
    from vidaccel_train.models import create_model
    from vidaccel_train.quantization import pt2e
    from vidaccel_train.quantization.fake_quant import pass_through

    torch.manual_seed(0)
    shape = (3, 4, 32, 32)
    net = create_model("x3d_xs", num_classes=5).eval()
    passing = pt2e.prepare(copy.deepcopy(net), shape, "qat")
    requantizing = pt2e.prepare(copy.deepcopy(net), shape, "qat", requantize_moved_values=True)
    assert passing.state_dict().keys() == requantizing.state_dict().keys()  # checkpoints fit either
    moved = [n.args[0] for n in passing.graph.nodes if n.target is pass_through]
    assert len(moved) > 50
    assert {str(n.target) for n in moved} == {"aten.slice.Tensor", "aten.cat.default", "aten.hardtanh.default"}
    # The quantizers of padded clips (squeeze-excite's zeroed means share theirs with a mean and
    # reshapes, which round again by the quantizer's design).
    padded = {n.args[1].target for n in passing.graph.nodes if n.target is pass_through and "cat" in n.args[0].name}

    calls = {}
    for model in (passing, requantizing):
        counts = {}
        for module in {id(m): m for m in map(model.get_submodule, padded)}.values():  # one name per move
            module.register_forward_pre_hook(lambda m, _, c=counts: c.__setitem__(id(m), c.get(id(m), 0) + 1))
        model.train()
        model(torch.randn(2, *shape))
        calls[model is passing] = sorted(counts.values())
    assert len(calls[True]) == 27 and set(calls[True]) == {1} and min(calls[False]) == 6

    requantizing.load_state_dict(passing.state_dict())
    clip = torch.randn(2, *shape) * 2
    results = []
    for model in (passing, requantizing):
        pt2e.set_observers(model, False)
        model.zero_grad()
        logits = model(clip)
        logits.square().sum().backward()
        results.append((logits, [p.grad for p in model.parameters()]))
    (logits, grads), (reference, reference_grads) = results
    assert torch.equal(logits, reference)
    assert all(torch.equal(a, b) for a, b in zip(grads, reference_grads))
    assert torch.equal(pt2e.convert_int8(passing)(clip), pt2e.convert_int8(requantizing)(clip))
    assert any(n.target is pass_through for n in passing.graph.nodes)  # converting left the QAT graph alone


def test_the_quantized_state_is_typed_and_old_checkpoints_still_load():
    """Checkpoints keep the state as a plain dict (the safe loader reads it); one written before
    ``requantize_moved_values`` existed loads as requantizing, as torchao's QAT did then, and one
    written before ``deploy_revision`` existed rebuilds the graph of deploy-form revision 1 (its
    observers are not those of revision 2: loading it into the current graph would fail)."""
    from vidaccel_train.models import create_model
    from vidaccel_train.training import QuantState, VideoClassifier

    def module():
        net = create_model("x3d_tiny", num_classes=4)
        return VideoClassifier(net, optimizer=functools.partial(torch.optim.SGD, lr=0.1), num_classes=4)

    current = module()
    with pytest.raises(TypeError, match="takes a QuantState"):
        current.enter_quantization({"mode": "qat", "input_shape": [3, 4, 32, 32]})  # a checkpoint's dict
    current.enter_quantization(QuantState("qat", (3, 4, 32, 32)))
    trained = module()
    trained.enter_quantization(QuantState("qat", (3, 4, 32, 32), start_step=7, lr_scale=0.3, deploy_revision=1))
    trained.freeze_observers()
    assert trained.state_dict().keys() != current.state_dict().keys()
    checkpoint = {"state_dict": trained.state_dict()}
    trained.on_save_checkpoint(checkpoint)
    assert checkpoint["quantization"] == {
        "mode": "qat", "input_shape": [3, 4, 32, 32], "observers_frozen": True, "start_step": 7, "lr_scale": 0.3,
        "requantize_moved_values": False, "deploy_revision": 1,
    }  # fmt: skip
    del checkpoint["quantization"]["requantize_moved_values"]  # as written before the options
    del checkpoint["quantization"]["deploy_revision"]
    resumed = module()
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"])
    assert resumed.quant_state == QuantState(
        "qat", (3, 4, 32, 32), True, 7, 0.3, requantize_moved_values=True, deploy_revision=1
    )
    clip = torch.randn(2, 3, 4, 32, 32)
    trained.eval(), resumed.eval()
    with torch.no_grad():
        assert torch.allclose(trained(clip), resumed(clip), atol=1e-5)  # frozen ranges: the same function
