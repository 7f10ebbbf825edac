"""QAT and PTQ on generated data through the real pipeline."""

import json

import pytest
import torch

from vidaccel_train.train import run

from conftest import TINY_FIT, compose_config

QAT_RUN = [*TINY_FIT, "quant=qat", "quant.start_epoch=1", "quant.freeze_observer_epoch=2", "trainer.max_epochs=4",
           "optim=adamw"]


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
