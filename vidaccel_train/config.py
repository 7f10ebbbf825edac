"""Hydra plumbing shared by every entry point: where the configs are and our resolvers."""

from __future__ import annotations

import inspect
import logging
from dataclasses import fields
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vidaccel_train.errors import ConfigError, check_count, check_number

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

log = logging.getLogger(__name__)

SYNTHETIC_MIN_DURATION_S = 2.0


def synthetic_duration_s(num_frames: int, sampling_rate: int, target_fps: float) -> float:
    """How long generated videos last: 2 s, or a model's clip span plus 0.4 s when that is longer
    (X3D-S's 13 x 6 frames span 2.6 s at 30 fps: 3.0 s videos). Counts that are not positive
    give 2 s: the datamodule refuses them, naming the key, when it is built."""
    span = _span_s(num_frames, sampling_rate, target_fps)
    return SYNTHETIC_MIN_DURATION_S if span is None else max(SYNTHETIC_MIN_DURATION_S, round(span + 0.4, 1))


def _span_s(num_frames, sampling_rate, target_fps) -> float | None:
    """A clip's span in seconds; None for counts that are not positive numbers (the datamodule
    refuses those, naming the key, when it is built)."""
    from vidaccel_train.data.contract import ClipContract

    try:
        for key, value in {"num_frames": num_frames, "sampling_rate": sampling_rate, "target_fps": target_fps}.items():
            check_number(f"data.{key}", value)
    except ConfigError:
        return None
    return ClipContract.span_of(num_frames, sampling_rate, target_fps)


if not OmegaConf.has_resolver("len"):
    OmegaConf.register_new_resolver("len", lambda items: len(items))
if not OmegaConf.has_resolver("any"):  # ${any:${model.pretrained},${model.checkpoint}}: trained weights?
    OmegaConf.register_new_resolver("any", lambda *values: any(bool(value) for value in values))


def clip_contract(model_name: str, key: str):
    """``${clip_contract:<model name>,<key>}``: one value of the zoo entry's clip contract, as
    plain config values (lists for tuples), for the ``model.clip`` block every model option shares.

    Raises:
        ConfigError: the model is not in the zoo, or the contract has no such key.
    """
    from vidaccel_train.models.zoo import zoo_entry

    values = zoo_entry(model_name).clip.as_dict()
    if key not in values:
        raise ConfigError(f"the clip contract has no {key!r}; its keys: {', '.join(values)}")
    # A list as a ListConfig: OmegaConf.resolve (``--cfg job --resolve``) cannot store a plain one.
    return OmegaConf.create(values[key]) if isinstance(values[key], list) else values[key]


if not OmegaConf.has_resolver("clip_contract"):
    OmegaConf.register_new_resolver("clip_contract", clip_contract)
if not OmegaConf.has_resolver("synthetic_duration_s"):
    OmegaConf.register_new_resolver("synthetic_duration_s", synthetic_duration_s)


def reconcile(cfg) -> None:
    """Settle, in place and with one log line each, the settings one group gives another.

    An experiment's settings for a group the command line replaced are left aside: ``quant.*``
    under ``quant=none`` (no callback to configure), QAT's settings under ``quant=ptq`` (not its
    arguments), ``data.synthetic.*`` on a data option that generates nothing (``data=kinetics``);
    Hydra merges such keys into the replacing option, where they would configure something
    half-defined. (What one component's own settings mean together, such as the QAT schedule
    against ``trainer.max_epochs``, that component checks and settles when it is built.)

    Raises:
        ConfigError: ``model.name`` is not in the zoo (said here, before the clip contract it
            names is read: OmegaConf would report a resolver's error as its own, in a traceback).
    """
    from vidaccel_train.data.synthetic import SyntheticSpec
    from vidaccel_train.models.zoo import zoo_entry

    zoo_entry(OmegaConf.select(cfg, "model.name", default=""))

    quant = cfg.get("quant")
    if quant and "_target_" not in quant:
        log.info("quant=none: fp32 only; the settings %s do not apply", ", ".join(f"quant.{key}" for key in quant))
        cfg.quant = None
    elif quant:
        from hydra.utils import get_class

        accepted = inspect.signature(get_class(quant._target_)).parameters
        foreign = [key for key in quant if key != "_target_" and key not in accepted]
        if foreign:
            log.info(
                "quant=%s: the settings %s do not apply",
                quant._target_.rsplit(".", 1)[-1],
                ", ".join(f"quant.{key}" for key in foreign),
            )
            cfg.quant = {key: value for key, value in quant.items() if key not in foreign}
    synthetic = OmegaConf.select(cfg, "data.synthetic", default=None)
    if synthetic and not {f.name for f in fields(SyntheticSpec)} <= set(synthetic):
        log.info(
            "data.root=%s is not generated: the settings %s do not apply",
            OmegaConf.select(cfg, "data.root", default="?"),
            ", ".join(f"data.synthetic.{key}" for key in synthetic),
        )
        cfg.data.synthetic = None


def validate(cfg) -> None:
    """Catch, before anything is built, the mistakes that lie between groups (or in settings no
    component of ours receives: Lightning's trainer, top-level keys). Each component checks its
    own arguments when Hydra builds it (see their ``Raises:`` sections); call :func:`reconcile`
    first.

    Raises:
        ConfigError: naming the keys and a value that would work.
    """
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError(
            "data.root is not set: pass data.root=/path/to/dataset (or run on the generated data with data=synthetic)"
        )
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs", throw_on_missing=False)
    check_count("trainer.max_epochs", max_epochs)
    if cfg.get("test_ckpt") not in ("best", "last"):
        raise ConfigError(f"test_ckpt must be best or last, got {cfg.get('test_ckpt')!r}")
    accelerator = cfg.trainer.get("accelerator")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA device that PyTorch can use: "
            "run with trainer=cpu (or trainer=ddp trainer.accelerator=cpu)"
        )
    _check_generated_videos(cfg)


def _check_generated_videos(cfg) -> None:
    """model x data: a clip must fit in the generated videos."""
    synthetic = cfg.data.get("synthetic")
    frames, rate, fps = (OmegaConf.select(cfg.data, key) for key in ("num_frames", "sampling_rate", "target_fps"))
    span = _span_s(frames, rate, fps)
    if synthetic and span is not None and span > synthetic.duration_s:
        raise ConfigError(
            f"a clip of {frames} frames every {rate} at {fps} fps spans {span:.2f} s but the generated videos last "
            f"{synthetic.duration_s} s: raise data.synthetic.duration_s or lower model.clip.num_frames / "
            "model.clip.sampling_rate"
        )


def runs_on_cpu(trainer_cfg) -> bool:
    """Whether a trainer config ends up on the CPU (``auto`` without a CUDA device included)."""
    accelerator = trainer_cfg.get("accelerator") or "auto"
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
