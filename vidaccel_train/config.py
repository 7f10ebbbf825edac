"""Hydra plumbing shared by every entry point: where the configs are and our resolvers."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from vidaccel_train.errors import ConfigError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

if not OmegaConf.has_resolver("len"):
    OmegaConf.register_new_resolver("len", lambda items: len(items))


def _int_at_least(cfg, key: str, minimum: int, expected: str) -> None:
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def _positive_number(cfg, key: str) -> None:
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ConfigError(f"{key} must be a positive number, got {value!r}")


def validate(cfg) -> None:
    """Catch the config mistakes that would otherwise surface minutes into a run."""
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError("data.root is not set: pass data.root=/path/to/dataset (or run on the generated data with data=synthetic)")
    for key in ("data.batch_size", "data.num_frames", "data.sampling_rate", "data.crop_size", "data.eval_short_side",
                "data.test_views.clips", "data.test_views.crops", "trainer.max_epochs", "data.num_classes",
                "data.train_clips_per_video"):
        _int_at_least(cfg, key, 1, "a positive integer")
    for key in ("optim.lr", "data.target_fps"):
        _positive_number(cfg, key)
    _int_at_least(cfg, "data.num_workers", 0, "0 or more")
    _int_at_least(cfg, "data.low_res_epochs", 0, "0 or more")
    scale = OmegaConf.select(cfg, "data.low_res_scale", throw_on_missing=False)
    if scale is not None and not (isinstance(scale, (int, float)) and 0 < scale <= 1):
        raise ConfigError(f"data.low_res_scale must be in (0, 1], got {scale!r}")
    low_res_epochs = OmegaConf.select(cfg, "data.low_res_epochs", throw_on_missing=False) or 0
    quant = cfg.get("quant")
    qat = bool(quant) and str(quant.get("_target_", "")).endswith("QuantizationAwareTraining")
    qat_start = OmegaConf.select(cfg, "quant.start_epoch", throw_on_missing=False) if qat else None
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs", throw_on_missing=False)
    if qat_start is not None and isinstance(max_epochs, int):
        from vidaccel_train.quantization.callbacks import QuantizationAwareTraining

        if qat_start >= max_epochs:
            raise ConfigError(
                f"quant.start_epoch={qat_start} but trainer.max_epochs={max_epochs}: QAT would never run; "
                f"set quant.start_epoch below {max_epochs} (-1: the last epoch), or quant=none for fp32 only"
            )
        qat_start = QuantizationAwareTraining.resolve_start(qat_start, max_epochs)
        freeze = OmegaConf.select(cfg, "quant.freeze_observer_epoch", throw_on_missing=False)
        if freeze is not None and freeze < qat_start:
            raise ConfigError(
                f"quant.freeze_observer_epoch={freeze} comes before QAT starts (epoch {qat_start}): set it to "
                f"{qat_start} or later, or quant.freeze_observer_epoch=null"
            )
    if qat_start is not None and qat_start >= 0 and low_res_epochs > qat_start:
        raise ConfigError(
            f"data.low_res_epochs={low_res_epochs} but QAT starts at epoch {qat_start}: the quantized graph takes "
            f"full-size clips only; set data.low_res_epochs<={qat_start} or start QAT later"
        )
    _int_at_least(cfg, "data.decoder_threads", 0, "0 (FFmpeg chooses) or more")
    aspect = OmegaConf.select(cfg, "data.display_aspect", throw_on_missing=False)
    if aspect is not None and aspect not in ("square", "stored"):
        raise ConfigError(f"data.display_aspect must be square or stored, got {aspect!r}")
    if cfg.data.crop_size > cfg.data.eval_short_side:
        raise ConfigError(f"data.crop_size={cfg.data.crop_size} is larger than data.eval_short_side={cfg.data.eval_short_side}")
    synthetic = cfg.data.get("synthetic")
    if synthetic:
        from vidaccel_train.data.clips import ClipSpec

        span = ClipSpec(cfg.data.num_frames, cfg.data.sampling_rate, cfg.data.target_fps).span_s
        if span > synthetic.duration_s:
            raise ConfigError(
                f"a clip of {cfg.data.num_frames} frames every {cfg.data.sampling_rate} at {cfg.data.target_fps} fps spans "
                f"{span:.2f} s but the generated videos last {synthetic.duration_s} s: raise data.synthetic.duration_s "
                "or lower model.clip.num_frames / model.clip.sampling_rate"
            )
    accelerator = cfg.trainer.get("accelerator")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA device that PyTorch can use: "
            "run with trainer=cpu (or trainer=ddp trainer.accelerator=cpu)"
        )
    precisions = OmegaConf.select(cfg, "callbacks.export.precisions", throw_on_missing=False)
    if precisions is not None:
        from vidaccel_train.export.artifacts import check_precisions

        check_precisions(precisions)
    if cfg.get("test_ckpt") not in ("best", "last"):
        raise ConfigError(f"test_ckpt must be best or last, got {cfg.get('test_ckpt')!r}")


def runs_on_cpu(trainer_cfg) -> bool:
    """Whether a trainer config ends up on the CPU (``auto`` without a CUDA device included)."""
    accelerator = trainer_cfg.get("accelerator") or "auto"
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
