"""The model zoo: names, input clips, published checkpoints and checkpoint loading, in one place."""

from __future__ import annotations

import logging
import pickle
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidaccel_train.data.contract import ClipContract
from vidaccel_train.errors import CheckpointError, ConfigError
from vidaccel_train.models.x3d import EfficientX3dNet, StageSpec, x3d_stages

_ZOO_URL = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
# Parameters that depend on the number of classes; a different num_classes re-initialises them.
log = logging.getLogger(__name__)

HEAD_KEYS = ("projection.model.weight", "projection.model.bias")


@dataclass(frozen=True)
class ZooEntry:
    """An architecture, the clip it takes (the config's ``model.clip`` reads it) and its published
    weights, if any."""

    stages: tuple[StageSpec, ...]
    clip: ClipContract
    checkpoint_url: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)  # other EfficientX3dNet arguments

    @property
    def num_frames(self) -> int:
        return self.clip.num_frames

    @property
    def sampling_rate(self) -> int:
        return self.clip.sampling_rate

    @property
    def crop_size(self) -> int:
        return self.clip.crop_size

    @property
    def checkpoint_file(self) -> str | None:
        return self.checkpoint_url.rsplit("/", 1)[-1] if self.checkpoint_url else None


ZOO: dict[str, ZooEntry] = {
    "x3d_xs": ZooEntry(
        tuple(x3d_stages("XS")),
        ClipContract(4, 12, 160, (182, 228), 182),
        f"{_ZOO_URL}/efficient_x3d_xs_original_form.pyth",
    ),
    "x3d_s": ZooEntry(
        tuple(x3d_stages("S")),
        ClipContract(13, 6, 160, (182, 228), 182),
        f"{_ZOO_URL}/efficient_x3d_s_original_form.pyth",
    ),
    "x3d_m": ZooEntry(tuple(x3d_stages("M")), ClipContract(16, 5, 224, (256, 320), 256)),
    "x3d_l": ZooEntry(tuple(x3d_stages("L")), ClipContract(16, 5, 312, (356, 446), 356)),
    # A narrow, shallow X3D of the same blocks: fast tests and smoke runs on a laptop CPU.
    "x3d_tiny": ZooEntry(
        (StageSpec(1, 24, 16), StageSpec(2, 48, 24), StageSpec(2, 96, 48), StageSpec(1, 144, 64)),
        ClipContract(4, 6, 56, (60, 68), 60),
        arch={"stem_channels": 16, "head_channels": 144, "fc_channels": 256, "init": "pytorch"},
    ),
}


def list_models() -> list[str]:
    return sorted(ZOO)


def zoo_entry(name: str) -> ZooEntry:
    """The zoo entry ``name``.

    Raises:
        ConfigError: no such entry (the message lists them).
    """
    if name not in ZOO:
        raise ConfigError(f"model.name={name} is not in the zoo; available: {', '.join(list_models())}")
    return ZOO[name]


def create_model(
    name: str,
    num_classes: int = 400,
    pretrained: bool = False,
    checkpoint: str | None = None,
    dropout: float = 0.5,
    freeze_backbone: bool = False,
    **arch: Any,
) -> nn.Module:
    """Build a zoo model in its original (train) form, optionally with weights.

    ``pretrained`` loads the published Kinetics-400 checkpoint through the torch hub cache;
    ``checkpoint`` loads a local ``.pyth`` state_dict or a ``.ckpt`` of ours. With a
    ``num_classes`` other than the checkpoint's, the classifier head starts fresh. ``arch``
    overrides the entry's architecture (``stages``, ``stem_channels``, ``head_channels``,
    ``fc_channels``, ``se_ratio``, ``activations``) for a custom network.
    """
    entry = zoo_entry(name)
    if pretrained and checkpoint:
        raise ValueError("set either pretrained=true or checkpoint=<path>, not both")
    settings = {"stages": entry.stages, **entry.arch, **{k: v for k, v in arch.items() if v is not None}}
    model = EfficientX3dNet(num_classes=num_classes, dropout=dropout, **settings)
    if pretrained:
        load_weights(model, download_zoo_checkpoint(name))
    elif checkpoint:
        load_weights(model, read_state_dict(checkpoint))
    if freeze_backbone:
        for param_name, param in model.named_parameters():
            param.requires_grad = param_name in HEAD_KEYS
    return model


def download_zoo_checkpoint(name: str) -> dict[str, torch.Tensor]:
    """The published state_dict of ``name``, from the torch hub cache or downloaded into it."""
    entry = zoo_entry(name)
    if entry.checkpoint_url is None:
        with_weights = [n for n in list_models() if ZOO[n].checkpoint_url]
        raise CheckpointError(
            f"no published checkpoint for '{name}' (published: {', '.join(with_weights)}); "
            "train from scratch or pass model.checkpoint=/path/to/weights"
        )
    cached = Path(torch.hub.get_dir()) / "checkpoints" / entry.checkpoint_file
    try:
        return torch.hub.load_state_dict_from_url(
            entry.checkpoint_url, map_location="cpu", progress=True, weights_only=True
        )
    except (urllib.error.URLError, OSError) as err:
        raise CheckpointError(
            f"could not download {entry.checkpoint_url} ({err}). Without network, put the file at "
            f"{cached} (the torch hub cache, see TORCH_HOME), or pass model.checkpoint=/path/to/{entry.checkpoint_file}"
        ) from err


# Keys under which checkpoints people hand around keep the network's weights.
_STATE_DICT_KEYS = ("state_dict", "model_state", "model", "module", "net")
# Prefixes that wrappers put on every key: DDP and DataParallel, Lightning modules holding the
# network as self.model / self.net (ours), torch.compile.
_WRAPPER_PREFIXES = ("module.", "model.", "net.", "_orig_mod.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, loaded with PyTorch's safe loader (``weights_only``:
    tensors and plain containers only; nothing in the file runs). Takes a bare state_dict
    (PyTorchVideo's ``.pyth``), one under ``state_dict`` (Lightning, ours included),
    ``model_state`` (PySlowFast), ``model``, ``module`` or ``net``; wrapper prefixes are
    stripped by :func:`load_weights`.

    Raises:
        CheckpointError: the file is missing, unreadable, would run code to load, holds a
            quantized model, or holds no state_dict (top-level keys and sample keys named).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    blob = load_checkpoint(path)
    if isinstance(blob, dict) and blob.get("quantization"):
        raise CheckpointError(
            f"{path} holds a quantized ({blob['quantization']['mode']}) deploy-form model, not train-form "
            "weights: export it with python -m vidaccel_train.export, or resume it with ckpt_path"
        )
    for key in (None, *_STATE_DICT_KEYS):
        candidate = blob if key is None else (blob.get(key) if isinstance(blob, dict) else None)
        if isinstance(candidate, dict) and candidate and all(isinstance(v, torch.Tensor) for v in candidate.values()):
            if key is not None and key != "state_dict":
                log.info("%s: the weights under '%s'", path, key)
            return dict(candidate)
    found = sorted(map(str, blob))[:8] if isinstance(blob, dict) else type(blob).__name__
    raise CheckpointError(
        f"{path} holds no state_dict: found {found}; expected tensors by name, bare or under one of "
        f"{', '.join(_STATE_DICT_KEYS)}"
    )


def load_checkpoint(path: str | Path, mmap: bool = False):
    """``torch.load`` with the safe loader: a file whose pickle would run code is refused.
    ``mmap``: map the tensors instead of reading them (a zip-format file, such as a ``.ckpt``),
    for a caller that wants the rest of the file.

    Raises:
        CheckpointError: unreadable or damaged, or it needs code to load.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"refusing {path}: loading it would run code stored in the file ({reason[:200]}). Checkpoints are "
            "read with PyTorch's safe loader (tensors and plain containers only). If you trust the file, convert "
            "it once where it may run: torch.save(torch.load(path, weights_only=False)['<key holding the "
            "weights>'], 'weights.pt') and pass weights.pt"
        ) from err
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); is it complete?"
        ) from err


def _strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """``state_dict`` without the prefixes every key carries (``module.``, ``model.``, ...) when
    its keys do not match the model's as they are; one log line says which were stripped."""
    stripped = []
    while state_dict and not (set(state_dict) & own):
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state_dict)), None)
        if prefix is None:
            break
        state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
        stripped.append(prefix)
    if stripped:
        log.info("checkpoint keys carried the prefix %s on every key: stripped", "".join(stripped))
    return state_dict


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state_dict`` strictly, except head tensors whose shape differs (a new label set).

    Returns the keys left at their fresh initialisation; any other mismatch raises, naming keys.
    """
    own = model.state_dict()
    state_dict = _strip_wrapper_prefixes(state_dict, set(own))
    skipped = [k for k in HEAD_KEYS if k in state_dict and k in own and state_dict[k].shape != own[k].shape]
    incoming = {k: v for k, v in state_dict.items() if k not in skipped}
    missing = sorted(set(own) - set(incoming) - set(skipped))
    unexpected = sorted(set(incoming) - set(own))
    wrong_shape = sorted(k for k in set(incoming) & set(own) if incoming[k].shape != own[k].shape)
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            "checkpoint does not match the model: "
            + "; ".join(
                f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
                if keys
            )
        )
    model.load_state_dict(incoming, strict=False)
    if skipped:
        log.warning("new label set: left %s freshly initialised", ", ".join(skipped))
    return skipped
