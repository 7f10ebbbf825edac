"""Hydra plumbing shared by every entry point: where the configs are and our resolvers."""

from __future__ import annotations

import inspect
import logging
from dataclasses import fields
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vidaccel_train.errors import ConfigError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

log = logging.getLogger(__name__)

SYNTHETIC_MIN_DURATION_S = 2.0


def synthetic_duration_s(num_frames: int, sampling_rate: int, target_fps: float) -> float:
    """How long generated videos last: 2 s, or a model's clip span plus 0.4 s when that is longer
    (X3D-S's 13 x 6 frames span 2.6 s at 30 fps: 3.0 s videos)."""
    span = num_frames * sampling_rate / target_fps
    return max(SYNTHETIC_MIN_DURATION_S, round(span + 0.4, 1))


if not OmegaConf.has_resolver("len"):
    OmegaConf.register_new_resolver("len", lambda items: len(items))
if not OmegaConf.has_resolver("synthetic_duration_s"):
    OmegaConf.register_new_resolver("synthetic_duration_s", synthetic_duration_s)


def reconcile(cfg) -> None:
    """Settle, in place and with one log line each, the settings one group gives another.

    An experiment's settings for a group the command line replaced are left aside: ``quant.*``
    under ``quant=none`` (no callback to configure), QAT's settings under ``quant=ptq`` (not its
    arguments), ``data.synthetic.*`` on a data option that generates nothing (``data=kinetics``);
    Hydra merges such keys into the replacing option, where they would configure something
    half-defined. Low-resolution epochs end where QAT starts (the quantized graph takes full-size
    clips): ``trainer.max_epochs=10`` on the default 19 low-resolution epochs runs 9 of them.
    """
    from vidaccel_train.data.synthetic import SyntheticSpec

    quant = cfg.get("quant")
    if quant and "_target_" not in quant:
        log.info("quant=none: fp32 only; the settings %s do not apply", ", ".join(f"quant.{key}" for key in quant))
        cfg.quant = None
    elif quant:
        from hydra.utils import get_class

        accepted = inspect.signature(get_class(quant._target_)).parameters
        foreign = [key for key in quant if key != "_target_" and key not in accepted]
        if foreign:
            log.info("quant=%s: the settings %s do not apply", quant._target_.rsplit(".", 1)[-1],
                     ", ".join(f"quant.{key}" for key in foreign))
            cfg.quant = {key: value for key, value in quant.items() if key not in foreign}
    synthetic = OmegaConf.select(cfg, "data.synthetic", default=None)
    if synthetic and not {f.name for f in fields(SyntheticSpec)} <= set(synthetic):
        log.info("data.root=%s is not generated: the settings %s do not apply",
                 OmegaConf.select(cfg, "data.root", default="?"), ", ".join(f"data.synthetic.{key}" for key in synthetic))
        cfg.data.synthetic = None
    quant = cfg.get("quant")
    low_res_epochs = OmegaConf.select(cfg, "data.low_res_epochs", default=0)
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    start = OmegaConf.select(cfg, "quant.start_epoch", default=None) if quant else None
    if isinstance(start, int) and isinstance(max_epochs, int) and isinstance(low_res_epochs, int):
        from vidaccel_train.quantization.callbacks import QuantizationAwareTraining

        start = QuantizationAwareTraining.resolve_start(start, max_epochs)
        if 0 <= start < low_res_epochs:
            log.info("data.low_res_epochs=%d: the low-resolution epochs end at epoch %d, where QAT starts",
                     low_res_epochs, start)
            cfg.data.low_res_epochs = start


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
        trained = OmegaConf.select(cfg, "model.checkpoint", default=None) or OmegaConf.select(cfg, "model.pretrained", default=False)
        if qat_start == 0 and not trained and max_epochs > 1:
            # One-epoch runs (trainer=debug, debug=*) exercise the code and learn little either way: allowed.
            given = OmegaConf.select(cfg, "quant.start_epoch")
            start = "quant.start_epoch=0" if given == 0 else f"quant.start_epoch={given} with trainer.max_epochs={max_epochs}"
            raise ConfigError(
                f"{start} starts QAT at the first epoch on untrained weights: QAT trains the deploy form, whose "
                "BatchNorm is folded into the convolutions, and an untrained network has no statistics to fold (it "
                "stays at chance: measured on experiment=smoke, 12 epochs). Start from trained weights "
                "(model.checkpoint=PATH or model.pretrained=true), or train in fp32 first: quant.start_epoch=N with "
                "N >= 1 (-1: the last epoch)"
            )
        freeze = OmegaConf.select(cfg, "quant.freeze_observer_epoch", throw_on_missing=False)
        if freeze is not None and freeze < qat_start:
            raise ConfigError(
                f"quant.freeze_observer_epoch={freeze} comes before QAT starts (epoch {qat_start}): set it to "
                f"{qat_start} or later, or quant.freeze_observer_epoch=null"
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
