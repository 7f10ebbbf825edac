"""Every option of every config group composes, resolves and (where it can here) instantiates."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.max_epochs=abc"], "trainer.max_epochs must be a positive integer, got 'abc'"),
        (["data.batch_size=0"], "data.batch_size must be a positive integer"),
        (["optim.lr=-1"], "optim.lr must be a positive number"),
        (["data=kinetics"], "data.root is not set"),
        (["model.clip.num_frames=40"], "spans 16.00 s but the generated videos last"),
        (["model.clip.crop_size=400"], "data.crop_size=400 is larger than data.eval_short_side"),
        (["test_ckpt=first"], "test_ckpt must be best or last"),
        (["data.decoder_threads=-1"], "data.decoder_threads must be 0 (FFmpeg chooses) or more, got -1"),
        (["callbacks.export.precisions=[int4]"], "callbacks.export.precisions must name one or more of ['fp32', 'int8'], got ['int4']"),
        (["callbacks.export.precisions=[]"], "callbacks.export.precisions must name one or more"),
        (["data.low_res_epochs=21"], "data.low_res_epochs=21 but QAT starts at epoch 20"),
    ],
)
def test_config_mistakes_are_one_message_before_any_work(tmp_path, data_dir, overrides, message):
    from vidaccel_train.config import ConfigError
    from vidaccel_train.train import run

    with pytest.raises(ConfigError, match=re.escape(message)):
        run(compose_config(tmp_path, data_dir, overrides))
    assert not list(tmp_path.iterdir())  # nothing was generated, trained or written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_gpu_run_without_cuda_is_one_line_naming_trainer_cpu(tmp_path):
    result = _cli("trainer=gpu", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: trainer.accelerator=gpu") and "trainer=cpu" in lines[-1]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "checkpoints").exists()


def test_the_cli_prints_the_mistake_without_a_traceback(tmp_path):
    result = _cli("trainer.max_epochs=abc", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "error: trainer.max_epochs must be a positive integer" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_clip_longer_than_the_real_videos_is_named_before_training(tmp_path, data_dir, tiny_dataset):
    from vidaccel_train.config import ConfigError
    from vidaccel_train.train import run

    from conftest import TINY_FIT

    overrides = [o for o in TINY_FIT if not o.startswith("data.synthetic")]
    cfg = compose_config(tmp_path, data_dir, [*overrides, "data=kinetics", f"data.root={tiny_dataset}", "data.num_classes=4",
                                              "model.clip.num_frames=16"])  # 16 x 6 frames at 30 fps > 1 s videos
    with pytest.raises(ConfigError, match=r"spans 3.20 s but the videos of .* last about 1.0"):
        run(cfg)


def test_the_slurm_launcher_composes_for_cluster_sweeps():
    result = _cli("--cfg", "hydra", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SlurmLauncher" in result.stdout and "partition: gpu" in result.stdout


def test_quant_none_on_an_experiment_that_sets_quant_keys_trains_fp32(tmp_path, data_dir):
    from vidaccel_train.config import validate
    from vidaccel_train.train import quantization_callback

    cfg = compose_config(tmp_path, data_dir, ["experiment=smoke", "quant=none"])
    assert set(cfg.quant) == {"start_epoch", "freeze_observer_epoch", "lr_scale"}  # merged into the empty group
    validate(cfg)
    assert quantization_callback(cfg) is None
    assert quantization_callback(compose_config(tmp_path, data_dir, ["experiment=smoke"])) is not None


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["quant.start_epoch=12", "quant.freeze_observer_epoch=null"], "quant.start_epoch=12 but trainer.max_epochs=12"),
        (["quant.start_epoch=11", "quant.freeze_observer_epoch=10"], "quant.freeze_observer_epoch=10 comes before QAT starts"),
    ],
)
def test_qat_settings_that_cannot_run_are_one_error_line_before_any_work(tmp_path, overrides, message):
    result = _cli("experiment=smoke", *overrides, f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [next(line for line in errors if line.startswith("error: "))] and message in errors[0]
    assert "Fitting" not in result.stdout + result.stderr and not (tmp_path / "data").exists()
