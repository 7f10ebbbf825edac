"""The export callback: the product of a run is a verified program a phone can run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
from hydra.utils import instantiate

from vidaccel_train.export.artifacts import PRECISIONS, check_precisions, export_artifacts

log = logging.getLogger(__name__)


def net_builder(run_config: dict):
    """Builds the run's network afresh (architecture only: no weights are downloaded or read)."""
    net_config = {**run_config["model"]["net"], "pretrained": False, "checkpoint": None}
    return lambda: instantiate(net_config)


class ExportCallback(L.Callback):
    """After the test that ends a run, write ``<out_dir>`` (default ``<run dir>/export``).

    Exporting after the test means the artifacts are the tested model: the best or last
    checkpoint, quantized as the run was (QAT), or calibrated after training when it was fp32.
    Only rank 0 exports.
    """

    def __init__(
        self,
        enabled: bool = True,
        out_dir: str | None = None,
        threads: int | None = None,
        latency_repeats: int = 20,
        calibration_batches: int = 16,
        precisions: list[str] | tuple[str, ...] = PRECISIONS,
    ):
        self.enabled = enabled
        self.precisions = check_precisions(precisions)  # a typo fails before training, not after
        self.out_dir = out_dir
        # Never more threads than cores: an oversubscribed eager reference would flatter the programs.
        self.threads = threads or min(4, os.cpu_count() or 1)
        self.latency_repeats = latency_repeats
        self.calibration_batches = calibration_batches
        self.manifest: dict | None = None

    def on_test_end(self, trainer: L.Trainer, pl_module) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        if trainer.fast_dev_run:
            log.info("fast_dev_run: skipping export")
            return
        if pl_module.run_config is None:
            raise RuntimeError(
                "the module has no run config to rebuild its network from; export from a checkpoint of ours"
            )
        out_dir = Path(self.out_dir) if self.out_dir else Path(trainer.default_root_dir) / "export"
        log.info("Exporting ExecuTorch artifacts to %s", out_dir)
        self.manifest = export_artifacts(
            pl_module,
            trainer.datamodule,
            out_dir,
            build_net=net_builder(pl_module.run_config),
            model_name=pl_module.run_config["model"]["name"],
            threads=self.threads,
            latency_repeats=self.latency_repeats,
            calibration_batches=self.calibration_batches,
            precisions=self.precisions,
        )
