"""Shared fixtures: the generated-data cache, the tiny dataset and one smoke run per session.
Helpers live in the package :mod:`support`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vidaccel_train.data.synthetic import generate_dataset

from support import TINY_SPEC

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """The generated-data cache shared by every test of the session."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_dataset(data_dir) -> Path:
    return generate_dataset(data_dir / "tiny", TINY_SPEC)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, data_dir) -> Path:
    """`python -m vidaccel_train experiment=smoke` run once per session (fit, QAT, test, export)."""
    run_dir = tmp_path_factory.mktemp("smoke")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidaccel_train",
            "experiment=smoke",
            f"hydra.run.dir={run_dir}",
            f"paths.data_dir={data_dir}",
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def start_weights(tmp_path_factory) -> Path:
    """An x3d_tiny state_dict to start QAT from its first epoch (``model.checkpoint=``): the
    QAT callback refuses to start at epoch 0 on untrained weights. Its BatchNorm statistics come from a
    few random clips; the tests that use it check QAT's mechanics, not what it learns."""
    from vidaccel_train.models import create_model

    torch.manual_seed(0)
    net = create_model("x3d_tiny", num_classes=4, dropout=0.0).train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 3, 4, 32, 32))
    path = tmp_path_factory.mktemp("weights") / "x3d_tiny.pyth"
    torch.save(net.state_dict(), path)
    return path


def pytest_runtest_logreport(report):
    """With ``VIDACCEL_TEST_RESULTS=<file>``, a JSON line per test as it ends (its outcome, the
    phase that decided it, seconds): ``scripts/device_check.sh`` keeps every result of a step cut
    off by its time limit, which a JUnit file written at the end would lose."""
    path = os.environ.get("VIDACCEL_TEST_RESULTS")
    if not path or (report.when != "call" and report.passed):
        return
    import json

    record = {
        "test": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "seconds": round(report.duration, 1),
    }
    if report.failed:
        lines = (report.longreprtext or "").strip().splitlines()
        record["error"] = lines[-1][:500] if lines else ""
    with open(path, "a") as stream:
        stream.write(json.dumps(record) + "\n")
