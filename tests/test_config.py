"""Every option of every config group composes, resolves and (where it can here) instantiates."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vidaccel_train.config import CONFIG_DIR
from vidaccel_train.train import instantiate_group

from conftest import compose_config

REPO = Path(CONFIG_DIR).parent
GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(group, yaml.stem) for group in GROUPS for yaml in sorted((Path(CONFIG_DIR) / group).glob("*.yaml"))]


def test_every_group_has_options():
    assert {"model", "data", "trainer", "callbacks", "logger", "experiment", "debug", "paths", "optim"} <= set(GROUPS)


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_resolves(tmp_path, data_dir, group, option):
    cfg = compose_config(tmp_path, data_dir, [f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert resolved["model"]["net"]["num_classes"] == resolved["data"]["num_classes"]
    if group in ("callbacks", "logger"):
        instantiate_group(cfg.get(group))
    if group == "trainer" and option != "gpu":
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs >= 1
    if group == "optim":
        import torch

        optimizer = instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(1))])
        assert optimizer.param_groups[0]["lr"] == cfg.optim.lr


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vidaccel_train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )


def test_help_lists_groups_and_cfg_job_shows_the_config():
    help_text = _cli("--help")
    assert help_text.returncode == 0
    for group in ("model", "data", "trainer", "experiment"):
        assert f"{group}:" in help_text.stdout
    job = _cli("--cfg", "job", "model=x3d_s")
    assert job.returncode == 0
    assert "name: x3d_s" in job.stdout and "num_frames: 13" in job.stdout


def test_unknown_group_option_lists_the_valid_ones():
    result = _cli("model=nope")
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "Could not find 'model/nope'" in message
    assert "x3d_xs" in message and "x3d_s" in message
