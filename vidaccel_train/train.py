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
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")), logger=instantiate_group(cfg.get("logger")) or False
    )

    if cfg.get("train"):
        log.info("Fitting %s on %s", cfg.model.name, cfg.data.root)
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if cfg.get("train") and not best:
            log.warning("No best checkpoint was saved; testing the current weights")
        ckpt = best or (None if cfg.get("train") else cfg.get("ckpt_path"))
        log.info("Testing %s", ckpt or "current weights")
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        metrics_file = {"best_checkpoint": best or None, "metrics": metrics}
    else:
        metrics_file = {"metrics": metrics}

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics_file, indent=2, sort_keys=True))
        log.info("Metrics written to %s", output_dir / "metrics.json")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    # A sweeper (hparams_search) optimises the metric this returns.
    target = cfg.get("optimized_metric")
    return metrics.get(target) if target else None


if __name__ == "__main__":
    main()
