"""Every option of every config group composes, resolves and (where it can here) instantiates."""

import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vidaccel_train.config import CONFIG_DIR
from vidaccel_train.train import build_trainer, instantiate_group

from support import compose_config

REPO = Path(CONFIG_DIR).parent
GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name != "hydra")
# A leading underscore marks what options start from (conf/data/_common.yaml), not an option.
OPTIONS = [(group, yaml.stem) for group in GROUPS for yaml in sorted((Path(CONFIG_DIR) / group).glob("[!_]*.yaml"))]


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
        trainer = build_trainer(cfg.trainer, logger=False, enable_checkpointing=False)
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
    job = _cli("--cfg", "job", "--resolve", "model=x3d_s")  # the clip contract's values, from the zoo
    assert job.returncode == 0
    assert "name: x3d_s" in job.stdout and "num_frames: 13" in job.stdout
    assert "train_short_side:\n    - 182\n    - 228" in job.stdout


@pytest.mark.parametrize(
    "command, shown",
    [
        ("vidaccel-train", "model:"),
        ("vidaccel-export", "ckpt_path=<run>/checkpoints/last.ckpt"),
        ("vidaccel-verify-target", "--cpus"),
        ("vidaccel-predict", "--timeline"),
        ("vidaccel-demo", "usage:"),
        ("vidaccel-check", "usage:"),
        ("vidaccel-prepare", "usage:"),
    ],
)
def test_every_command_is_installed_as_a_script_and_shows_its_help(command, shown):
    """The commands a user runs with ``python -m`` are also on the PATH of the install
    (``[project.scripts]``), each the same entry point."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / command), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert shown in result.stdout


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
        (["model.clip.num_frames=40", "data.synthetic.duration_s=2.0"], "spans 16.00 s but the generated videos last"),
        (["model.clip.crop_size=400"], "data.crop_size=400 is larger than data.eval_short_side"),
        (["test_ckpt=first"], "test_ckpt must be best or last"),
        (["data.decoder_threads=-1"], "data.decoder_threads must be 0 (FFmpeg chooses) or more, got -1"),
        (
            ["callbacks.export.precisions=[int4]"],
            "callbacks.export.precisions must name one or more of ['fp32', 'int8'], got ['int4']",
        ),
        (["callbacks.export.precisions=[]"], "callbacks.export.precisions must name one or more"),
        (["model.name=resnet50"], "model.name=resnet50 is not in the zoo; available: x3d_l, x3d_m, x3d_s"),
        (["model.clip.target_fps=0"], "data.target_fps must be a positive number, got 0"),
    ],
)
def test_config_mistakes_are_one_message_before_any_work(tmp_path, data_dir, overrides, message):
    from vidaccel_train.errors import ConfigError
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
    from vidaccel_train.errors import ConfigError
    from vidaccel_train.train import run

    from support import TINY_FIT

    overrides = [o for o in TINY_FIT if not o.startswith("data.synthetic")]
    cfg = compose_config(
        tmp_path,
        data_dir,
        [*overrides, "data=kinetics", f"data.root={tiny_dataset}", "data.num_classes=4", "model.clip.num_frames=16"],
    )  # 16 x 6 frames at 30 fps > 1 s videos
    with pytest.raises(ConfigError, match=r"spans 3.20 s but the videos of .* last about 1.0"):
        run(cfg)


def test_the_slurm_launcher_composes_for_cluster_sweeps():
    result = _cli("--cfg", "hydra", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SlurmLauncher" in result.stdout and "partition: gpu" in result.stdout


def test_quant_none_on_an_experiment_that_sets_quant_keys_trains_fp32(tmp_path, data_dir, caplog):
    from vidaccel_train.config import reconcile, validate

    cfg = compose_config(tmp_path, data_dir, ["experiment=smoke", "quant=none"])
    assert set(cfg.quant) == {"start_epoch", "freeze_observer_epoch", "lr_scale"}  # merged into the empty group
    with caplog.at_level("INFO"):
        reconcile(cfg)
    validate(cfg)
    assert cfg.quant is None and "quant=none: fp32 only; the settings quant.start_epoch" in caplog.text
    cfg = compose_config(tmp_path, data_dir, ["experiment=smoke"])
    reconcile(cfg)
    assert cfg.quant.start_epoch == 8


def test_an_experiment_on_real_data_leaves_its_generator_settings_aside(tmp_path, data_dir, caplog):
    from vidaccel_train.config import reconcile, validate

    cfg = compose_config(tmp_path, data_dir, ["experiment=finetune", "data=kinetics", f"data.root={tmp_path}"])
    assert set(cfg.data.synthetic) == {"classes"}  # merged into data=kinetics, which generates nothing
    with caplog.at_level("INFO"):
        reconcile(cfg)
    validate(cfg)
    assert cfg.data.synthetic is None and "the settings data.synthetic.classes do not apply" in caplog.text


def test_the_config_leaves_the_qat_schedule_to_the_callback(tmp_path, data_dir):
    """config.py checks between groups only: the schedule (and where the low-resolution epochs
    end) is the callback's, which gets the epochs and the starting weights from conf/quant/qat.yaml."""
    from vidaccel_train.config import reconcile, validate

    cfg = compose_config(tmp_path, data_dir, ["trainer.max_epochs=10"])  # QAT in the last epoch, 9
    reconcile(cfg)
    validate(cfg)
    assert cfg.data.low_res_epochs == 19  # the callback ends them at epoch 9 when the fit sets up
    assert (cfg.quant.max_epochs, cfg.quant.trained_weights) == (10, False)
    for weights, trained in ((["model.pretrained=true"], True), ([f"model.checkpoint='{tmp_path}/a,b.ckpt'"], True)):
        assert compose_config(tmp_path, data_dir, weights).quant.trained_weights is trained
    source = (REPO / "vidaccel_train" / "config.py").read_text()
    assert "vidaccel_train.training" not in source
    ptq = compose_config(tmp_path, data_dir, ["quant=ptq"])
    assert set(ptq.quant) == {"_target_", "calibration_batches"}  # no schedule for the calibration


def test_every_model_fits_the_default_generated_videos(tmp_path, data_dir):
    """The README's `python -m vidaccel_train model=x3d_s` on the default data: the generated
    videos last long enough for the model's clip."""
    from vidaccel_train.config import validate

    for model in ("x3d_xs", "x3d_s", "x3d_m", "x3d_l"):
        cfg = compose_config(tmp_path, data_dir, [f"model={model}"])
        validate(cfg)
        data = OmegaConf.to_container(cfg.data, resolve=True)
        span = data["num_frames"] * data["sampling_rate"] / data["target_fps"]
        assert span <= data["synthetic"]["duration_s"] <= max(2.0, span + 0.5), model
    assert compose_config(tmp_path, data_dir, []).data.synthetic.duration_s == 2.0  # the main job's data unchanged


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("[!_]*.yaml"))


# validate() checks across groups: trainer (epochs, devices) and model x data (clip span, crop);
# the QAT callback checks its schedule against the epochs when built; optim stands alone. Each experiment is composed with every pair of those.
COMBINATIONS = [
    [*([f"experiment={e}"] if e else []), *pair]
    for e in [None, *_options("experiment")]
    for pair in [
        *([f"quant={q}", f"trainer={t}"] for q in _options("quant") for t in _options("trainer")),
        *([f"model={m}", f"data={d}"] for m in _options("model") for d in _options("data")),
        *([f"optim={o}"] for o in _options("optim")),
    ]
]
FIX = re.compile(r"\b(set|pass|run with|raise|lower|start from|or) ")


def test_every_experiment_with_every_option_is_valid_or_one_line_naming_the_keys_and_the_fix(tmp_path, data_dir):
    """Config composition, validate() and the quantization callback (which checks its schedule
    when built; no data, no model): each combination's callbacks, loggers and trainer arguments
    instantiate to Lightning objects, or it is refused with one line that names the settings and
    what to do."""
    from lightning.pytorch.loggers import Logger

    from vidaccel_train.config import reconcile, validate
    from vidaccel_train.errors import ConfigError, as_user_error

    rejected = {}
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        for overrides in COMBINATIONS:
            paths = [f"paths.root_dir={tmp_path}", f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}"]
            real_data = ["data.root=/datasets/kinetics"] if "data=kinetics" in overrides else []
            cfg = compose("train", overrides=[*paths, *overrides, *real_data])
            reconcile(cfg)
            try:
                validate(cfg)
                quant = [instantiate(cfg.quant)] if cfg.get("quant") else []  # it checks its schedule
            except Exception as err:
                if not isinstance(as_user_error(err), ConfigError):
                    raise
                message = str(as_user_error(err))
                assert "\n" not in message and re.search(r"\b[a-z_]+\.[a-z_.]+\b", message) and FIX.search(message), (
                    message
                )
                rejected[" ".join(overrides)] = message
                continue
            callbacks = instantiate_group(cfg.callbacks) + quant  # the bar builds nothing without a terminal
            assert all(isinstance(c, L.Callback) for c in callbacks), overrides
            loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c and "_target_" in c]
            assert all(isinstance(c, Logger) for c in loggers), overrides
            OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    # What is refused, and why: a GPU trainer without CUDA (slurm_multinode's whatever the trainer
    # group); a model clip longer than smoke's 1.2 s videos (every model but x3d_tiny, on smoke's
    # generated data).
    gpu = {"trainer=gpu", "experiment=slurm_multinode"}
    expected = {" ".join(o) for o in COMBINATIONS if gpu & set(o) and not torch.cuda.is_available()}
    expected |= {
        " ".join(o)
        for o in COMBINATIONS
        if o[0] == "experiment=smoke" and "data=synthetic" in o and "model=x3d_tiny" not in o
    }
    assert set(rejected) == expected, sorted(set(rejected) ^ expected)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["quant.start_epoch=12", "quant.freeze_observer_epoch=null"],
            "quant.start_epoch=12 but trainer.max_epochs=12",
        ),
        (
            ["quant.start_epoch=11", "quant.freeze_observer_epoch=10"],
            "quant.freeze_observer_epoch=10 comes before QAT starts",
        ),
        (["quant.start_epoch=0"], "quant.start_epoch=0 starts QAT at the first epoch on untrained weights"),
        (
            ["quant.start_epoch=-12", "quant.freeze_observer_epoch=null"],
            "quant.start_epoch=-12 with trainer.max_epochs=12 starts QAT at the first epoch on untrained weights",
        ),
    ],
)
def test_qat_settings_that_cannot_run_are_one_error_line_before_any_work(tmp_path, overrides, message):
    """The QAT callback refuses its schedule when Hydra builds it, first: one line, before any
    data is generated or step trained."""
    result = _cli(
        "experiment=smoke", *overrides, f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}"
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], result.stderr
    assert "Fitting" not in result.stdout + result.stderr and not (tmp_path / "data").exists()
