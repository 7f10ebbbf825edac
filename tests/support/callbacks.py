"""Lightning callbacks that tests put into real runs (``+callbacks.<name>._target_=support.callbacks.<Class>``):
stopping or killing a run at a chosen point and recording what it did."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L


class StopAfterEpoch(L.Callback):
    """Stops fit cleanly after ``epoch`` (its checkpoints written): a run cut off at that point."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class KillAt(L.Callback):
    """Kills its own process with ``signal`` at one point of a fit: after training batch
    ``batch`` of ``epoch`` (``stage=train``), after validation batch ``batch`` of ``epoch``
    (``stage=validation``), or ``delay_s`` seconds after the final test's last batch, that is,
    during the export (``stage=export``)."""

    def __init__(self, stage: str, epoch: int = 0, batch: int = 0, signal: str = "SIGKILL", delay_s: float = 1.0):
        import signal as signals

        self.stage, self.epoch, self.batch, self.delay_s = stage, epoch, batch, delay_s
        self.signal = getattr(signals, signal)

    def _kill(self):
        os.kill(os.getpid(), self.signal)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.stage == "train" and (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            self._kill()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if (
            self.stage == "validation"
            and not trainer.sanity_checking
            and (trainer.current_epoch, batch_idx) == (self.epoch, self.batch)
        ):
            self._kill()

    def on_test_epoch_end(self, trainer, pl_module):
        if self.stage == "export":
            import threading

            threading.Timer(self.delay_s, self._kill).start()


class RecordTrainIndices(L.Callback):
    """Writes the dataset indices each rank trained on, per epoch: ``<out_dir>/rank<r>_epoch<e>.txt``."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.txt", "a") as stream:
            stream.write("".join(f"{i}\n" for i in batch["index"].tolist()))


class RecordRankState(L.Callback):
    """At the end of fit, writes a digest of each rank's weights and buffers (observers' ranges
    included) to ``<out_dir>/rank<r>.txt``: under DDP every rank must hold the same model."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer, pl_module):
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.txt").write_text(digest.hexdigest())


class RecordObservers(L.Callback):
    """Appends ``<epoch> <batch> <observing>`` per training batch of a quantized model to ``path``:
    whether every fake-quantize module of the network is updating its range."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.quant_state is None:
            return
        flags = [bool(m.observer_enabled[0]) for m in pl_module.net.modules() if hasattr(m, "observer_enabled")]
        assert flags, "a quantized network without fake-quantize modules"
        with open(self.path, "a") as stream:
            stream.write(f"{trainer.current_epoch} {batch_idx} {int(all(flags))}\n")


class RecordBatchShapes(L.Callback):
    """Appends ``<epoch> <height>x<width>`` per training batch to ``path``."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        height, width = batch["video"].shape[-2:]
        with open(self.path, "a") as stream:
            stream.write(f"{trainer.current_epoch} {height}x{width}\n")


class RecordDevices(L.Callback):
    """Appends one JSON line per training epoch to ``path``: where the first batch and the weights
    were, the train loader's workers and pinned memory, and the precision plugin. A GPU test reads
    it to know the steps ran on CUDA (a run that silently fell back to the CPU passes otherwise)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self._epoch = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._epoch == trainer.current_epoch:
            return
        import json

        self._epoch = trainer.current_epoch
        loader = trainer.train_dataloader
        record = {
            "epoch": trainer.current_epoch,
            "batch_device": str(batch["video"].device),
            "weights_device": str(next(pl_module.parameters()).device),
            "num_workers": loader.num_workers,
            "pin_memory": loader.pin_memory,
            "precision": str(trainer.precision),
            "quantized": pl_module.quant_state is not None,
        }
        with open(self.path, "a") as stream:
            stream.write(json.dumps(record) + "\n")


class PauseAt(L.Callback):
    """In a job's first run (not one SLURM started again), after training batch ``batch`` of
    ``epoch``: rank 0 writes ``marker`` and every rank waits there, up to ``seconds``, until a
    SIGTERM or SLURM's time-limit signal comes (what a test sends or waits for at that point)."""

    def __init__(self, marker: str, epoch: int = 0, batch: int = 0, seconds: float = 120.0):
        self.marker, self.epoch, self.batch, self.seconds = Path(marker), epoch, batch, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time

        from vidaccel_train.training import cluster

        if cluster.requeued_job() or (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        if trainer.is_global_zero:
            self.marker.write_text(f"{os.getpid()}\n")
        end = time.monotonic() + self.seconds
        while time.monotonic() < end and not trainer.received_sigterm and cluster._pending_requeue is None:
            time.sleep(0.1)
