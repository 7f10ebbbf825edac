"""Runs kept out of the default suite: full-size X3D-XS end to end (slow) and GPU training (gpu).

    .venv/bin/python -m pytest -m slow      # minutes on 2 CPU cores
    .venv/bin/python -m pytest -m gpu       # skipped without a CUDA device
"""

import json

import pytest
import torch

from vidaccel_train.train import run

from conftest import TINY_FIT, compose_config


@pytest.mark.slow
def test_main_job_fits_full_size_x3d_xs_and_exports_it(tmp_path, data_dir):
    """The README's main job (generated data, X3D-XS at 160x160, export), one epoch."""
    metrics = run(compose_config(tmp_path, data_dir, ["trainer.max_epochs=1", "callbacks.export.latency_repeats=3"]))
    assert "test/top1" in metrics
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["model"] == "x3d_xs" and manifest["input_shape"] == [1, 3, 4, 160, 160]
    assert {a["precision"]: a["agreement"] >= 0.95 for a in manifest["artifacts"]} == {"fp32": True, "int8": True}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("quant", ["null", "qat"])
def test_gpu_fit_with_mixed_precision(tmp_path, data_dir, quant):
    overrides = [*TINY_FIT, "trainer=gpu", f"quant={quant}", "trainer.max_epochs=2"]
    if quant == "qat":
        overrides += ["quant.start_epoch=1"]
    metrics = run(compose_config(tmp_path, data_dir, overrides))
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
