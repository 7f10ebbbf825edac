"""Every path on a CUDA device, through the CLI (``-m gpu``; skipped without CUDA):

    python -m pytest -m gpu tests/test_gpu.py

fp32 and bf16-mixed fits, QAT switched on mid-run and from epoch 0, PTQ, the int8 test, the
export after GPU training, resume mid-QAT, DDP on one GPU, and the export of a GPU run's
checkpoint in a process that sees no GPU.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from support import TINY_FIT, run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GPU = [*TINY_FIT, "trainer=gpu", "optim=adamw", "data.pin_memory=true"]
QAT = ["quant=qat", "quant.start_epoch=1", "quant.freeze_observer_epoch=2", "trainer.max_epochs=3"]
EXPORT = ["callbacks.export.enabled=true", "callbacks.export.latency_repeats=2"]


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


def _manifest(run_dir):
    return json.loads((run_dir / "export" / "manifest.json").read_text())


@pytest.mark.parametrize(
    "name, overrides, export",
    [
        ("fp32", ["trainer.precision=32-true", "trainer.max_epochs=2"], False),
        ("bf16", ["trainer.precision=bf16-mixed", "trainer.max_epochs=2"], True),  # PTQ in the export
        ("qat_mid_run", QAT, True),
        ("qat_epoch0", [*QAT, "quant.start_epoch=0", "model.checkpoint=START_WEIGHTS"], False),
        ("ptq", ["quant=ptq", "quant.calibration_batches=2", "trainer.max_epochs=2"], False),
        ("ddp_one_gpu", [*QAT, "trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=1"], False),
    ],
)
def test_a_gpu_run_fits_tests_and_exports(tmp_path, data_dir, start_weights, name, overrides, export):
    overrides = [o.replace("START_WEIGHTS", str(start_weights)) for o in overrides]
    result = run_cli(tmp_path, data_dir, [*GPU, *overrides, *(EXPORT if export else [])])
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = _metrics(tmp_path)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    if name not in ("fp32", "bf16"):
        assert {"test/top1", "test_fp32/top1"} <= set(metrics)  # the int8 model was tested
    if export:
        artifacts = {a["precision"]: a for a in _manifest(tmp_path)["artifacts"]}
        assert set(artifacts) == {"fp32", "int8"} and artifacts["int8"]["agreement"] >= 0.9


def test_a_gpu_run_resumes_mid_qat_to_the_unstopped_run(tmp_path, data_dir):
    unstopped, stopped = tmp_path / "unstopped", tmp_path / "stopped"
    assert run_cli(unstopped, data_dir, [*GPU, *QAT]).returncode == 0
    cut = run_cli(
        stopped,
        data_dir,
        [
            *GPU,
            *QAT,
            "+callbacks.stop._target_=support.callbacks.StopAfterEpoch",
            "+callbacks.stop.epoch=1",
            "test=false",
        ],
    )
    assert cut.returncode == 0, cut.stderr[-4000:]
    resumed = run_cli(stopped, data_dir, [*GPU, *QAT, "ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    expected, got = _metrics(unstopped), _metrics(stopped)
    for key in ("test/top1", "test/loss", "test_fp32/loss", "val/loss"):
        assert got[key] == pytest.approx(expected[key], abs=1e-5), key


def test_a_gpu_checkpoint_exports_where_no_gpu_is_seen(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    assert run_cli(run_dir, data_dir, [*GPU, *QAT]).returncode == 0
    out = tmp_path / "exported"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidaccel_train.export",
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            f"out_dir={out}",
            "callbacks.export.latency_repeats=2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert {a["precision"] for a in json.loads((out / "manifest.json").read_text())["artifacts"]} == {"fp32", "int8"}
