"""Runs kept out of the default suite: full-size X3D-XS end to end (slow; GPU runs: test_gpu.py).

    .venv/bin/python -m pytest -m slow      # minutes on 2 CPU cores
"""

import json

import pytest

from vidaccel_train.train import run

from conftest import compose_config


@pytest.mark.slow
def test_main_job_fits_full_size_x3d_xs_and_exports_it(tmp_path, data_dir):
    """The README's main job (generated data, X3D-XS at 160x160, export), one epoch."""
    metrics = run(compose_config(tmp_path, data_dir, ["trainer.max_epochs=1", "callbacks.export.latency_repeats=3"]))
    assert "test/top1" in metrics
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["model"] == "x3d_xs" and manifest["input_shape"] == [1, 3, 4, 160, 160]
    assert {a["precision"]: a["agreement"] >= 0.95 for a in manifest["artifacts"]} == {"fp32": True, "int8": True}
