"""A run inside a SLURM job: who requeues it, and how its time limit becomes a checkpoint.

Requeueing is submitit's (the job's launcher, ``hydra/launcher=submitit_slurm``): at its time
limit (``--signal=USR2@signal_delay_s``) it re-submits the job up to ``max_num_timeout`` times,
and a preempted job always. Lightning's own SLURM requeueing (``SLURMEnvironment(auto_requeue=True)``:
``hpc_ckpt_N.ckpt`` and ``scontrol requeue`` on SIGUSR1) is off: :func:`slurm_environment` gives
the trainer ``auto_requeue=False`` (``conf/trainer/default.yaml``).

Both of those act inside a signal handler, wherever each process happens to be: submitit's raises
``SystemExit`` in rank 0 alone, mid-step, with the other ranks waiting in a collective.
:class:`SlurmTimeLimit` instead notes the signal and stops every rank at the same training step
(the ranks agree through one all-reduce per step), where the interruption checkpoint is written as
for SIGTERM (``OnExceptionCheckpoint``, written aside and renamed into place); only then does
submitit requeue (:func:`requeue_if_asked`). ``scontrol requeue`` and preemption send SIGTERM to
every task, which takes Lightning's own synchronised SIGTERM path to the same checkpoint; SLURM
itself puts the job back in the queue. A job started again (``SLURM_RESTART_COUNT`` > 0) resumes
from the newest of ``last.ckpt`` / ``interrupted.ckpt`` in its folder
(:func:`requeued_job`, used by ``vidaccel_train.train``).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

# What submitit's job script asks SLURM to send before the time limit (submitit's default).
TIME_LIMIT_SIGNAL = signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]

# submitit's handler, set aside when the time-limit signal came: called once the checkpoint is written.
_pending_requeue: Callable[[], None] | None = None


def in_submitit_slurm_job() -> bool:
    """Whether this process is a task of a SLURM job that submitit submitted."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def requeued_job() -> int:
    """How many times SLURM has started this job again (0: the first run, or not a SLURM job)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def slurm_environment(auto_requeue: bool = False) -> SLURMEnvironment | None:
    """Lightning's SLURM environment (ranks from SLURM's tasks) with its own requeueing as asked
    (off in the shipped config: submitit requeues), in a SLURM job; None elsewhere, so Lightning
    picks the environment it detects."""
    if not SLURMEnvironment.detect():
        return None
    return SLURMEnvironment(auto_requeue=auto_requeue)


def requeue_if_asked() -> None:
    """After a fit stopped by :class:`SlurmTimeLimit`, with its checkpoint written: hand the
    time-limit signal to submitit, which requeues the job (rank 0) and ends the process."""
    global _pending_requeue
    requeue, _pending_requeue = _pending_requeue, None
    if requeue is not None:
        requeue()


class SlurmTimeLimit(L.Callback):
    """In a submitit SLURM job's fit: the time-limit signal stops every rank at the same
    training step with a checkpoint (as SIGTERM does), then submitit requeues the job.

    From the fit's start to the process's end the signal is this callback's: one that comes after
    the last training step (in the last validation, the test or the export) is logged and the job
    goes on, since stopping there would lose work that a requeued job does again anyway; if the
    job cannot finish before its limit, ``train=false ckpt_path=last`` in its folder tests and
    exports its finished fit. Elsewhere (no SLURM, another launcher) it does nothing.
    """

    def __init__(self) -> None:
        self._submitit_handler: Any = None
        self._training = False
        self._asked = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not in_submitit_slurm_job():
            return
        handler = signal.getsignal(TIME_LIMIT_SIGNAL)
        if not callable(handler):
            return
        self._submitit_handler, self._training, self._asked = handler, True, False
        signal.signal(TIME_LIMIT_SIGNAL, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        global _pending_requeue
        name = signal.Signals(signum).name
        if not self._training:
            log.warning("%s from SLURM (the time limit is near) after training: the job goes on", name)
            return
        log.warning(
            "%s from SLURM (the time limit is near): stopping at the next training step with a checkpoint", name
        )
        self._asked = True
        handler = self._submitit_handler
        _pending_requeue = lambda: handler(signum, frame)  # noqa: E731

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._submitit_handler is None:
            return
        if trainer.strategy.reduce_boolean_decision(self._asked, all=False):
            raise SIGTERMException  # Lightning's interruption: OnExceptionCheckpoint writes the checkpoint

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        global _pending_requeue
        if self._training and self._asked:
            log.warning("the time-limit signal came after the last training step: the job goes on")
            _pending_requeue = None
        self._training = False
