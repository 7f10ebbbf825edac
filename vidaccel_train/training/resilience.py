"""What makes a stopped run resume to the numbers an unstopped one reaches."""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
import shutil
import zipfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vidaccel_train.data.contract import ClipContract
from vidaccel_train.errors import CheckpointError, ConfigError, OutputError
from vidaccel_train.files import remove_leftovers, write_atomic

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint beside its target and renames it into place, so a run killed
    while saving keeps the previous checkpoint whole instead of a truncated one.

    The checkpoint is serialised in memory first: its size is checked against the free space
    where it lands, and it is written there once (Lightning's own save stages it in the system
    temp folder and copies it over). A failed write removes its temporary file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote file systems: no rename to rely on
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        free = shutil.disk_usage(path.parent).free
        try:
            if len(data) > free:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            write_atomic(path, data)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise OutputError(
                f"no space left for checkpoint {path.name}: {path.parent} has {free / 1e6:.1f} MB free and the "
                f"checkpoint needs {len(data) / 1e6:.1f} MB; free space there (or start over in another "
                "hydra.run.dir), then resume with ckpt_path=last"
            ) from None


class _ResumedMetricsWriter(ExperimentWriter):
    """Lightning's CSV writer deletes the run's ``metrics.csv`` when it starts, so a resumed run
    would lose every row before its checkpoint. This one keeps them: rows logged before the first
    step the resumed run logs stay, later rows (from the part of the stopped run after its
    checkpoint, which the resumed run logs again) are replaced."""

    def _check_log_dir_exists(self) -> None:
        self._earlier_rows: list[dict[str, str]] | None = None
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as stream:
                reader = csv.DictReader(stream)
                self._earlier_rows = list(reader)
                self.metrics_keys = sorted(reader.fieldnames or [])

    def save(self) -> None:
        if self.metrics and self._earlier_rows is not None:
            first_step = min(row["step"] for row in self.metrics)
            kept = [row for row in self._earlier_rows if float(row.get("step") or 0) < first_step]
            with self._fs.open(self.metrics_file_path, "w", newline="") as stream:
                writer = csv.DictWriter(stream, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            self._earlier_rows = None
        super().save()


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` whose ``metrics.csv`` survives a resume into the same directory."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumedMetricsWriter(log_dir=self.log_dir)
        return self._experiment


def remove_stale_staging(checkpoint_dir: str | Path) -> None:
    """Temporary checkpoint files left by a process that was killed while saving."""
    for stale in remove_leftovers(checkpoint_dir):
        log.info("removed %s, left by a run stopped while saving", stale)


class ResumableTraining(L.Callback):
    """Resumes where the run stopped, with the same randomness, loader workers or not.

    - Seeds PyTorch's global generator (dropout) from ``(seed, global step)`` before every
      training step, so randomness does not depend on how the run got there.
    - Points the train sampler at the epoch being resumed, and, when the checkpoint was written
      mid-epoch (SIGTERM, see ``OnExceptionCheckpoint`` in ``conf/callbacks/resume.yaml``), has
      it skip the batches that epoch already trained on, so every clip is still seen once.
    Clip choice and augmentation are already seeded per ``(seed, epoch, clip)`` by the sampler.

    Lightning starts the first epoch's loader iterator before any hook runs (and before it sets
    the sampler's epoch); loader workers then draw indices from it at once. So a resumed run
    points the sampler and starts that iterator again; a fresh run needs neither.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed or 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        fit_loop = trainer.fit_loop
        done = fit_loop.epoch_loop.batch_progress.current.completed if fit_loop.restarted_mid_epoch else 0
        if not hasattr(sampler, "resume_after"):
            if done:
                log.warning(
                    "the train sampler cannot skip batches: epoch %d restarts from its first batch",
                    trainer.current_epoch,
                )
            return
        epoch = fit_loop.epoch_progress.current.processed
        if sampler.epoch == epoch and not done:
            return
        sampler.set_epoch(epoch)
        sampler.resume_after(done * loader.batch_size)
        iter(fit_loop._data_fetcher)  # the same call Lightning makes at an epoch's start
        if done:
            log.info("resuming epoch %d after its first %d batches", epoch, done)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        torch.manual_seed(self.seed * 1_000_003 + trainer.global_step)


# What `ckpt_path=last` resumes from: the epoch-end checkpoint or the one written on interruption.
RESUME_CHECKPOINTS = ("last", "interrupted")


def resolve_checkpoint(ckpt_path: str | None, checkpoint_dir: str | Path) -> str | None:
    """The checkpoint file a run starts from, checked before any work: ``last`` is the newest
    of ``last.ckpt`` / ``interrupted.ckpt`` in ``checkpoint_dir`` (none yet: a fresh start)."""
    remove_stale_staging(checkpoint_dir)
    if ckpt_path in (None, "best", "hpc"):
        return ckpt_path
    if ckpt_path == "last":
        candidates = [p for p in Path(checkpoint_dir).glob("*.ckpt") if p.stem in RESUME_CHECKPOINTS]
        if not candidates:
            log.warning("ckpt_path=last: no checkpoint in %s yet, starting from the beginning", checkpoint_dir)
            return None
        path = max(candidates, key=lambda p: p.stat().st_mtime)
    else:
        path = Path(ckpt_path)
    check_checkpoint_file(path)
    log.info("starting from checkpoint %s", path)
    return str(path)


# What a run leaves in its folder; a new run (no ckpt_path) never starts where one of them is.
RUN_TRACES = ("checkpoints/*.ckpt", "metrics.json", "export/manifest.json")


def run_traces(folder: str | Path) -> list[str]:
    """What a run left in ``folder`` (paths relative to it, sorted); empty for a fresh folder."""
    folder = Path(folder)
    return sorted({str(p.relative_to(folder)) for pattern in RUN_TRACES for p in folder.glob(pattern)})


def check_fresh_run_folder(folder: str | Path) -> None:
    """A new run's folder must not hold another run: Lightning would resume that run's last
    checkpoint (``OnExceptionCheckpoint`` turns ``fit(ckpt_path=None)`` into ``"last"``) and its
    metrics and export would be replaced.

    Raises:
        ConfigError: naming the folder, what is in it, and the two ways on.
    """
    found = run_traces(folder)
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ConfigError(
            f"{folder} already holds a run ({shown}): resume it with ckpt_path=last, or give the new run "
            "a folder of its own (hydra.run.dir=...)"
        )


def claim_run_folder(folder: str | Path) -> Path:
    """Make ``folder`` for a new run, or, if it exists already (another run started in the same
    second, as array jobs do), the first free ``<folder>_2``, ``<folder>_3``, ...; making it is
    atomic, so two processes never claim the same one. Returns the folder made."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    candidate, number = folder, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1
            candidate = folder.with_name(f"{folder.name}_{number}")


# The settings a checkpoint's weights, classes and inputs depend on: a resumed or tested run
# must have them as the checkpoint does. Everything else (optimizer, schedule, epochs, batch
# size, workers, data location) takes the value given now.
# The clip contract's keys in the data group, as the data group reads them from model.clip.
_CLIP_KEYS = tuple(f"data.{field.name}" for field in fields(ClipContract))
FIXED_SETTINGS = (
    "model.name",
    "model.clip",
    "model.net",
    "data.num_classes",
    *_CLIP_KEYS,
    "data.display_aspect",
    "quant",
)
# Where the starting weights come from: a resumed run takes its weights from the checkpoint. And
# what the QAT callback is told of them and of the epochs (from model.* and trainer.max_epochs).
_STARTING_WEIGHTS = {
    "model.pretrained",
    "model.checkpoint",
    "model.net.pretrained",
    "model.net.checkpoint",
    "quant.trained_weights",
    "quant.max_epochs",
}
# Settings that say where things are or what this command does, not what the run is.
_PER_COMMAND = ("paths", "hydra", "ckpt_path", "train", "test", "test_ckpt", "tags", "task_name", "callbacks", "logger")


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict):
        flat: dict[str, Any] = {}
        for key, value in config.items():
            flat.update(_flat(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: config}


def _shown(value: Any) -> str:
    return "unset" if value is _UNSET else repr(value)


_UNSET = object()


def compare_with_checkpoint(
    saved_config: dict, config: dict, saved_classes: list[str] | None = None, classes: list[str] | None = None
) -> list[str]:
    """Check a run's settings against those its checkpoint was written with.

    Args:
        saved_config: the checkpoint's ``run_config`` (the resolved config as a plain dict).
        config: this run's resolved config.
        saved_classes, classes: the checkpoint's class names and this run's dataset's (in order).

    Returns:
        The other settings that differ, each as ``"key: old -> new"`` (they apply from now on).

    Raises:
        CheckpointError: naming every fixed setting (:data:`FIXED_SETTINGS`) that differs, and the
            classes when they differ.
    """
    old, new = _flat(saved_config), _flat(config)
    fixed, changed = [], []
    for key in sorted(set(old) | set(new)):
        if key in _STARTING_WEIGHTS or key.split(".")[0] in _PER_COMMAND:
            continue
        before, after = old.get(key, _UNSET), new.get(key, _UNSET)
        if before == after or (isinstance(before, (list, tuple)) and list(before) == after):
            continue
        if before is _UNSET and (key.startswith("model.clip.") or key in _CLIP_KEYS):
            continue  # a contract key written before the config carried it (the contract's default was run)
        line = f"{key}: {_shown(before)} in the checkpoint, {_shown(after)} now"
        if any(key == f or key.startswith(f + ".") for f in FIXED_SETTINGS):
            fixed.append(line)
        elif before is not _UNSET:  # a setting that did not exist when the checkpoint was written: no change
            changed.append(f"{key}: {_shown(before)} -> {_shown(after)}")
    if saved_classes is not None and classes is not None and list(saved_classes) != list(classes):
        gone = [c for c in saved_classes if c not in classes]
        added = [c for c in classes if c not in saved_classes]
        detail = "; ".join(
            part
            for part in (
                f"not in this dataset: {', '.join(gone[:5])}" + (" ..." if len(gone) > 5 else "") if gone else "",
                f"new: {', '.join(added[:5])}" + (" ..." if len(added) > 5 else "") if added else "",
                "same classes in another order" if not gone and not added else "",
            )
            if part
        )
        fixed.append(f"classes: {len(saved_classes)} in the checkpoint, {len(classes)} in this dataset ({detail})")
    if fixed:
        raise CheckpointError(
            "the checkpoint was written by another run than this one: "
            + "; ".join(fixed)
            + ". Resume with the checkpoint's settings, or start a new run in its own folder "
            "(model.checkpoint=<.ckpt> starts from its weights)"
        )
    return changed


def check_checkpoint_file(path: str | Path) -> None:
    """A checkpoint is a zip archive with a checksum per entry: read them all (cheap, nothing
    unpickled) so a truncated or rotten file is named before a run depends on it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    advice = f"resume from another checkpoint in {path.parent}, or start the run over in a new run directory"
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({err}); it is truncated or corrupted: {advice}"
        ) from err
    if damaged is not None:
        raise CheckpointError(f"{path}: corrupted (entry {damaged} fails its checksum): {advice}")
