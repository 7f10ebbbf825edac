"""Entry point: compose the config, instantiate data, model, callbacks, loggers and trainer,
then fit and test. ``python -m vidaccel_train --help`` shows the groups and options."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vidaccel_train.config import CONFIG_DIR

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Every entry of a callbacks/logger group that names a ``_target_``."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and/or test as configured; returns the final metrics (also in metrics.json)."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    datamodule: L.LightningDataModule = instantiate(cfg.data)
    net = instantiate(cfg.model.net)
    module = instantiate(cfg.module, net=net, optimizer=instantiate(cfg.optim))
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = instantiate_group(cfg.get("callbacks"))
    if cfg.get("quant"):
        callbacks.append(instantiate(cfg.quant))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_group(cfg.get("logger")) or False)

    if cfg.get("train"):
        log.info("Fitting %s on %s", cfg.model.name, cfg.data.root)
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("test"):
        # After a fit: its best or last checkpoint (test_ckpt), or the weights in memory when no
        # checkpoint was written (fast_dev_run); without a fit: the checkpoint given, if any.
        if cfg.get("train"):
            tested = None if trainer.fast_dev_run else cfg.get("test_ckpt", "best")
        else:
            tested = cfg.get("ckpt_path")
        trainer.test(module, datamodule=datamodule, ckpt_path=tested)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test")})
        metrics_file = {"tested_checkpoint": trainer.ckpt_path, "metrics": metrics}
    else:
        metrics_file = {"metrics": metrics}

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics_file, indent=2, sort_keys=True))
        log.info("Metrics written to %s", output_dir / "metrics.json")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
