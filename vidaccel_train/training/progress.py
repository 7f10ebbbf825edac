"""How a run shows its progress: a Rich progress bar in a terminal; one log line per epoch in the
run's log (``<task_name>.log``), and on the console too when it is not a terminal (a cluster job,
a pipe, ``nohup``), where a bar would print nothing useful for the whole of training."""

from __future__ import annotations

import logging
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

log = logging.getLogger(__name__)


def rich_progress_bar(**kwargs) -> RichProgressBar | None:
    """Lightning's ``RichProgressBar(**kwargs)`` when standard output is a terminal, else None
    (no bar: :class:`EpochLog` says how the run goes)."""
    return RichProgressBar(**kwargs) if sys.stdout.isatty() else None


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class EpochLog(L.Callback):
    """One line per training epoch, from rank 0, after its validation:
    ``epoch 3/21: train loss 1.2345, val top-1 0.812, 12.3 s, about 3m05s left``.

    The time left is the last epoch's time times the epochs to go (the later, full-size and QAT
    epochs take longer than the first ones: it grows when they start). With a progress bar on
    the console (a terminal) the line goes to the log file only.
    """

    def __init__(self) -> None:
        self._started: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._started is None or not trainer.is_global_zero:
            return
        seconds = time.monotonic() - self._started
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        counted = total is not None and total > 0
        metrics = trainer.callback_metrics
        shown = [
            f"{name} {float(metrics[key]):.{digits}f}"
            for key, name, digits in (("train/loss_epoch", "train loss", 4), ("val/top1", "val top-1", 3))
            if key in metrics
        ]
        shown.append(f"{seconds:.1f} s")
        if counted and epoch < total:
            shown.append(f"about {format_duration(seconds * (total - epoch))} left")
        line = (f"epoch {epoch}/{total}: " if counted else f"epoch {epoch}: ") + ", ".join(shown)
        if trainer.progress_bar_callback is not None and sys.stdout.isatty():
            record = log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None)
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.FileHandler):
                    handler.handle(record)
        else:
            log.info(line)
