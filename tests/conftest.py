"""Shared fixtures: a tiny generated dataset (made once per session) and config composition."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from vidaccel_train.config import CONFIG_DIR
from vidaccel_train.data.synthetic import SyntheticSpec, generate_dataset

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_SPEC = SyntheticSpec(
    classes=("move_left", "move_right", "move_up", "move_down"),
    clips_per_class={"train": 3, "val": 2, "test": 2},
    height=48,
    width=64,
    duration_s=1.0,
    fps=15,
)


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
    config refuses QAT from epoch 0 on untrained weights. Its BatchNorm statistics come from a
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


def compose_config(run_dir: Path, data_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """The training config as the CLI composes it, with every path under the test's folders."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.root_dir={run_dir}",
                f"paths.data_dir={data_dir}",
                f"paths.output_dir={run_dir}",
                *overrides,
            ],
        )


# Overrides that make any run tiny: x3d_tiny on the session's small generated dataset.
TINY_RUN = [
    "model=x3d_tiny",
    "data.synthetic.classes=[move_left,move_right,move_up,move_down]",
    "data.synthetic.clips_per_class={train:3,val:2,test:2}",
    "data.synthetic.height=48",
    "data.synthetic.width=64",
    "data.synthetic.duration_s=1.0",
    "data.synthetic.fps=15",
    "data.num_workers=0",
    "data.batch_size=4",
    "model.clip.crop_size=32",
    "model.clip.train_short_side=[36,40]",
    "model.clip.eval_short_side=36",
    # The tiny dataset above (TINY_SPEC), trained in fp32 at one size unless a test asks otherwise.
    "data.synthetic.speed=0.35",
    "data.synthetic.texture=smooth",
    "data.low_res_epochs=0",
    "quant=none",
]


class StopAfterEpoch(L.Callback):
    """Stops fit cleanly after ``epoch`` (its checkpoints written): a run cut off at that point."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


# A tiny fit with checkpoints but without the export (tests of the export ask for it).
TINY_FIT = [*TINY_RUN, "callbacks.export.enabled=false", "callbacks.rich_progress_bar=null"]


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


def run_cli(
    run_dir: Path, data_dir: Path, overrides: list[str], timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m vidaccel_train` in its own process (this folder importable, for KillAt);
    flags such as ``-m`` may come anywhere in ``overrides``; ``env`` adds environment variables."""
    tests = Path(__file__).resolve().parent
    flags = [o for o in overrides if o.startswith("-")]
    overrides = [o for o in overrides if not o.startswith("-")]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "vidaccel_train",
            *flags,
            f"hydra.run.dir={run_dir}",
            f"paths.data_dir={data_dir}",
            *overrides,
        ],
        cwd=tests.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(tests), os.environ.get("PYTHONPATH")])),
            "HYDRA_FULL_ERROR": "1",
            **(env or {}),
        },
    )


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
