"""What makes a stopped run resume to the numbers an unstopped one reaches."""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vidaccel_train.errors import DiskFullError
from vidaccel_train.files import remove_leftovers, write_atomic
from vidaccel_train.models.zoo import CheckpointError

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
            raise DiskFullError(
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
