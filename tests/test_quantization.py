"""QAT and PTQ on generated data through the real pipeline."""

import copy
import json

import pytest
import torch

from vidaccel_train.train import run

from conftest import TINY_FIT, compose_config

QAT_RUN = [*TINY_FIT, "quant=qat", "quant.start_epoch=1", "quant.freeze_observer_epoch=2", "trainer.max_epochs=4",
           "optim=adamw"]


def _observer_ranges(state_dict):
    """Every observer's (min, max) in a checkpoint's state_dict."""
    return {k: (v, state_dict[k.removesuffix("min_val") + "max_val"]) for k, v in state_dict.items() if k.endswith(".min_val")}


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


def test_resuming_mid_qat_ends_exactly_as_an_unstopped_run(tmp_path, data_dir):
    unstopped = tmp_path / "unstopped"
    stopped = tmp_path / "stopped"
    expected = run(compose_config(unstopped, data_dir, QAT_RUN))
    # Cut off after epoch 2 (inside QAT, observers just frozen), then resume from last.ckpt.
    run(compose_config(stopped, data_dir, [*QAT_RUN, "+callbacks.stop._target_=conftest.StopAfterEpoch",
                                           "+callbacks.stop.epoch=2", "test=false"]))
    assert _last_state(stopped)["epoch"] == 2
    resumed = run(compose_config(stopped, data_dir, [*QAT_RUN, "ckpt_path=last"]))
    for key in ("test/top1", "test/loss", "test_fp32/loss", "val/loss"):
        assert resumed[key] == pytest.approx(expected[key], abs=1e-6), key
    final, reference = _last_state(stopped)["state_dict"], _last_state(unstopped)["state_dict"]
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_qat_from_the_first_epoch_observes_its_ranges_and_tests_int8(tmp_path, data_dir):
    observed = tmp_path / "observers.txt"
    metrics = run(compose_config(tmp_path, data_dir, [*QAT_RUN, "quant.start_epoch=0", "trainer.max_epochs=3",
                                                      "+callbacks.observers._target_=conftest.RecordObservers",
                                                      f"+callbacks.observers.path={observed}"]))
    assert {"test/top1", "test_fp32/top1"} <= set(metrics)  # the int8 conversion needs observed ranges
    ranges = _observer_ranges(_last_state(tmp_path)["state_dict"])
    assert len(ranges) > 50
    assert all(torch.isfinite(low).all() and torch.isfinite(high).all() and (low <= high).all()
               for low, high in ranges.values())
    # Observers learn in every QAT epoch before freeze_observer_epoch (=2), validation between them
    # included, and stop from then on.
    rows = [tuple(map(int, line.split())) for line in observed.read_text().splitlines()]
    assert {(epoch, observing) for epoch, _, observing in rows} == {(0, 1), (1, 1), (2, 0)}


def test_qat_that_would_never_start_is_refused_before_training(tmp_path, data_dir):
    with pytest.raises(Exception, match="start_epoch=9"):
        run(compose_config(tmp_path, data_dir, [*QAT_RUN, "quant.start_epoch=9", "quant.freeze_observer_epoch=null"]))


def test_ptq_calibrates_the_tested_checkpoint_and_tests_int8(tmp_path, data_dir):
    metrics = run(compose_config(tmp_path, data_dir, [*TINY_FIT, "quant=ptq", "quant.calibration_batches=2",
                                                      "trainer.max_epochs=1"]))
    assert {"test/top1", "test_fp32/top1"} <= set(metrics)
    assert "val_fp32/top1" not in metrics  # fp32 fit, quantized only for the test
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metrics"]["test/top1"] == metrics["test/top1"]


def test_qat_fine_tune_of_an_earlier_checkpoint_on_a_new_label_set_exports_int8(tmp_path, data_dir, caplog):
    """The zoo use case on tiny shapes: weights trained on four motions, a new head for two others,
    QAT from the first epoch, the int8 test and the export."""
    pretrain, finetune = tmp_path / "pretrain", tmp_path / "finetune"
    run(compose_config(pretrain, data_dir, [*TINY_FIT, "trainer.max_epochs=1", "test=false"]))
    metrics = run(compose_config(finetune, data_dir, [
        *TINY_FIT, f"model.checkpoint={pretrain / 'checkpoints' / 'last.ckpt'}",
        "data.synthetic.classes=[rotate_cw,rotate_ccw]", "quant=qat", "quant.start_epoch=0", "trainer.max_epochs=2",
        "optim=adamw", "callbacks.export.enabled=true", "callbacks.export.latency_repeats=2"]))
    assert {"test/top1", "test_fp32/top1"} <= set(metrics)
    manifest = json.loads((finetune / "export" / "manifest.json").read_text())
    assert manifest["classes"] == ["rotate_cw", "rotate_ccw"]
    assert {a["precision"] for a in manifest["artifacts"]} == {"int8"}  # the default callbacks.export.precisions
    # Everything but the classifier came from the earlier run; the classifier is new (other classes).
    assert "new label set: left projection.model.weight, projection.model.bias freshly initialised" in caplog.text
    assert _last_state(finetune)["quantization"]["start_step"] == 0


@pytest.mark.parametrize("observing, fake_quantizing", [(True, True), (False, True), (True, False)])
def test_vectorised_fake_quantization_gives_the_stock_values_gradients_and_ranges(observing, fake_quantizing):
    from vidaccel_train.models import create_model
    from vidaccel_train.quantization import pt2e
    from vidaccel_train.quantization.fake_quant import VectorisedFakeQuantize, vectorise_fake_quantize

    torch.manual_seed(0)
    shape = (3, 4, 32, 32)
    fast = pt2e.prepare(create_model("x3d_xs", num_classes=5).eval(), shape, "qat")
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
