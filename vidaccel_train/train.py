"""Entry point: compose the config, instantiate data, model, callbacks, loggers and trainer,
then fit and test. ``python -m vidaccel_train --help`` shows the groups and options."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, read_write

from vidaccel_train.allocator import keep_freed_memory
from vidaccel_train.cli import hydra_command, report_user_error, user_errors_end_the_command
from vidaccel_train.config import CONFIG_DIR, reconcile, runs_on_cpu, validate
from vidaccel_train.errors import CheckpointError, ConfigError, OutputError, as_user_error
from vidaccel_train.files import check_writable
from vidaccel_train.models.zoo import load_checkpoint
from vidaccel_train.quiet import FRESH_START_WARNINGS
from vidaccel_train.training.cluster import requeue_if_asked, requeued_job
from vidaccel_train.training.resilience import (
    check_fresh_run_folder,
    claim_run_folder,
    compare_with_checkpoint,
    resolve_checkpoint,
    run_traces,
)

log = logging.getLogger(__name__)


class FolderPerRun(Callback):
    """Hydra callback, before Hydra writes anything into the run's folder: a new run (no
    ``ckpt_path``) in the default folder, named after the second it started, gets ``<folder>_2``,
    ... when another run claimed that folder first (array jobs start together); a folder given
    with ``hydra.run.dir`` that holds a run, or a folder that cannot be written, is refused with
    one ``error:`` line (exit 2)."""

    @staticmethod
    def _claim(config: DictConfig, key: str) -> None:
        # The folder's name reads ${hydra:runtime.cwd} (paths.root_dir), which Hydra answers only
        # once it has set its config for the job, after this callback: set it now (it is set
        # again, with the folder claimed here, when the job starts).
        HydraConfig.instance().set_config(config)
        folder = Path(config.hydra[key].dir)
        given = any(o.lstrip("+~").split("=", 1)[0] == f"hydra.{key}.dir" for o in config.hydra.overrides.hydra)
        new_run = config.get("ckpt_path") is None
        try:
            if new_run and not given:
                claimed = claim_run_folder(folder)
                if claimed != folder:
                    with read_write(config.hydra):
                        config.hydra[key].dir = str(claimed)
                folder = claimed
            check_writable(folder, f"the run folder (hydra.{key}.dir)")
            if new_run and given and key == "run":
                check_fresh_run_folder(folder)
        except (OSError, OutputError, ConfigError) as err:  # claim_run_folder's mkdir raises OSError
            if isinstance(err, OSError):
                err = OutputError(f"cannot make the run folder {folder}: {err.strerror or err}")
            sys.exit(report_user_error(err))

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._claim(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._claim(config, "sweep")


def instantiate_group(group: DictConfig | None) -> list:
    """Every entry of a callbacks/logger group that names a ``_target_``."""
    if not group:
        return []
    built = (instantiate(entry) for entry in group.values() if isinstance(entry, DictConfig) and "_target_" in entry)
    return [item for item in built if item is not None]  # an entry may build nothing (no bar without a terminal)


def build_trainer(trainer_cfg: DictConfig, **kwargs) -> L.Trainer:
    """The ``trainer`` group as a Lightning ``Trainer`` (``kwargs``: its other arguments, such as
    ``callbacks`` and ``logger``): SyncBatchNorm off on the CPU (said in one line), the plugin
    entries that build nothing left out (the SLURM environment outside a SLURM job), and no
    progress bar at all where none is among the callbacks (no terminal, or the entry nulled),
    rather than Lightning's tqdm bar in its place."""
    if trainer_cfg.get("sync_batchnorm") and runs_on_cpu(trainer_cfg):
        log.info("DDP on the CPU: BatchNorm statistics stay per process (SyncBatchNorm needs GPUs)")
        trainer_cfg = OmegaConf.merge(trainer_cfg, {"sync_batchnorm": False})
    plugins = [p for p in (instantiate(entry) for entry in trainer_cfg.get("plugins") or []) if p is not None]
    if trainer_cfg.get("enable_progress_bar") is None and "enable_progress_bar" not in kwargs:
        if not any(isinstance(c, ProgressBar) for c in kwargs.get("callbacks") or []):
            kwargs["enable_progress_bar"] = False
    return instantiate(trainer_cfg, plugins=plugins or None, **kwargs)


def check_against_checkpoint(ckpt_path: str, run_config: dict, datamodule: L.LightningDataModule) -> None:
    """Before a run resumes or tests ``ckpt_path``: its model, classes and clip contract must be
    this run's (:func:`~vidaccel_train.training.resilience.compare_with_checkpoint` raises a
    :class:`CheckpointError` naming each difference); other changed settings are said in one line."""
    checkpoint = load_checkpoint(ckpt_path, mmap=True)  # the config and class names; Lightning reads the tensors
    saved = checkpoint.get("run_config")
    if not saved:  # not written by this project: Lightning checks what it can
        return
    datamodule.prepare_data()
    datamodule.setup("fit")
    changed = compare_with_checkpoint(
        saved, run_config, checkpoint.get("class_names"), getattr(datamodule, "class_names", None)
    )
    if changed:
        log.warning(
            "%s: settings changed since it was written, applied from here on: %s", ckpt_path, "; ".join(changed)
        )


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and/or test as configured; returns the final metrics (also in metrics.json)."""
    reconcile(cfg)
    validate(cfg)
    keep_freed_memory()
    output_dir = Path(cfg.paths.output_dir)
    requested = cfg.get("ckpt_path")
    if requested is None and requeued_job() and run_traces(output_dir):
        # SLURM started this job again (requeued, preempted or at its time limit): it goes on
        # from its own checkpoint in its own folder.
        log.info("SLURM started this job again (restart %d): resuming the run in %s", requeued_job(), output_dir)
        requested = "last"
    ckpt_path = resolve_checkpoint(requested, output_dir / "checkpoints")
    check_writable(output_dir, "the run folder")
    if requested is None:
        check_fresh_run_folder(output_dir)
    try:  # each component checks its arguments as it is built; Hydra wraps what it raises
        # The quantization schedule first (it draws no random numbers): a schedule that cannot
        # run is refused before anything else is said, data generated or weights loaded.
        quant = [instantiate(cfg.quant)] if cfg.get("quant") else []
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True)
        datamodule: L.LightningDataModule = instantiate(cfg.data)
        net = instantiate(cfg.model.net)
        module = instantiate(cfg.module, net=net, optimizer=instantiate(cfg.optim))
        callbacks = instantiate_group(cfg.get("callbacks")) + quant
        trainer = build_trainer(cfg.trainer, callbacks=callbacks, logger=instantiate_group(cfg.get("logger")) or False)
    except Exception as err:
        user_error = as_user_error(err)
        if user_error is None:
            raise
        raise user_error from None
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    if ckpt_path not in (None, "best", "hpc"):
        check_against_checkpoint(ckpt_path, module.run_config, datamodule)

    if cfg.get("train"):
        log.info("Fitting %s on %s", cfg.model.name, cfg.data.root)
        with warnings.catch_warnings():
            if ckpt_path is None and not list((output_dir / "checkpoints").glob("*.ckpt")):
                for message in FRESH_START_WARNINGS:
                    warnings.filterwarnings("ignore", message=message)
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("test"):
        # After a fit: its best or last checkpoint (test_ckpt), or the weights in memory when no
        # checkpoint was written (fast_dev_run); without a fit: the checkpoint given, if any.
        if cfg.get("train"):
            tested = None if trainer.fast_dev_run else cfg.get("test_ckpt", "best")
        else:
            tested = ckpt_path
        trainer.test(module, datamodule=datamodule, ckpt_path=tested, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test")})
        metrics_file = {"tested_checkpoint": trainer.ckpt_path, "metrics": metrics}
    else:
        metrics_file = {"metrics": metrics}

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics_file, indent=2, sort_keys=True))
        log.info("Metrics written to %s", output_dir / "metrics.json")
    return metrics


def run_search(cfg: DictConfig) -> None:
    """``hparams_search=<name>``: an Optuna study whose trials are whole runs, each composed
    from this command's overrides plus the trial's, in ``<run dir>/<trial number>``."""
    from hydra import compose

    from vidaccel_train.sweep import search

    task_overrides = list(HydraConfig.get().overrides.task)
    sweep_dir = Path(cfg.paths.output_dir)

    def run_trial(overrides: list[str], job_dir: Path) -> dict[str, float]:
        (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
        trial_cfg = compose("train", overrides=[*task_overrides, *overrides, f"paths.output_dir={job_dir}"])
        return run(trial_cfg)

    search(cfg.hparams_search, sweep_dir, run_trial)


def _in_a_sweep() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def _quiet_other_ranks() -> None:
    """Ranks other than 0 (DDP's other processes, SLURM's other tasks) run the same Hydra job and
    log to the same file: there, only their warnings and errors."""
    if rank_zero_only.rank:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.setLevel(max(handler.level, logging.WARNING))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _main(cfg: DictConfig) -> None:
    _quiet_other_ranks()
    # In a sweep a user error is raised on: vidaccel_train.sweep.SweepSummary records and logs
    # it, and the sweep goes on.
    with user_errors_end_the_command(unless=_in_a_sweep):
        try:
            run_search(cfg) if cfg.get("hparams_search") else run(cfg)
        except pickle.UnpicklingError as err:  # Lightning's safe load of a ckpt_path= file
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"refusing checkpoint {cfg.get('ckpt_path')}: loading it would run code stored in the file "
                f"({reason[:200]}); checkpoints are read with PyTorch's safe loader"
            ) from None
        except SIGTERMException:
            requeue_if_asked()  # the time limit of a SLURM job: submitit requeues it now (rank 0 exits there)
            if "SLURM_JOB_ID" in os.environ:
                print(
                    f"stopped by SLURM; checkpoints in {Path(cfg.paths.output_dir) / 'checkpoints'}: a requeued job "
                    "resumes from them by itself",
                    file=sys.stderr,
                )
                sys.exit(128 + signal.SIGTERM)
            print(
                f"stopped by SIGTERM; checkpoints in {Path(cfg.paths.output_dir) / 'checkpoints'}. "
                f"Resume with: ckpt_path=last hydra.run.dir={cfg.paths.output_dir}",
                file=sys.stderr,
            )
            sys.exit(128 + signal.SIGTERM)


# The command (python -m vidaccel_train, vidaccel-train): the overrides' syntax checked, then Hydra.
main = hydra_command(_main)


if __name__ == "__main__":
    main()
