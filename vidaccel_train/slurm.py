"""SLURM through Hydra's submitit launcher (``-m hydra/launcher=submitit_slurm``): the launcher's
tasks, nodes and GPUs settled from the trainer's before anything is submitted.

Lightning takes one rank per SLURM task: a job needs ``tasks_per_node`` equal to
``trainer.devices`` and ``nodes`` equal to ``trainer.num_nodes``, and each task must see every GPU
of its node (Lightning gives rank ``r`` of a node the ``r``-th visible device). The launcher's
defaults (one task, one node, no GPU) fit none of the multi-device runs, and a mismatch shows only
on the cluster, after the queue (Lightning's ``--ntasks-per-node`` error, or a run on fewer
devices than asked). Here the settings the user left at the launcher's defaults follow the
trainer's, and a contradiction is one ``error:`` line before submission.

Requeueing (docs/scaling.md#preemption-and-time-limits): submitit owns it; Lightning's own SLURM
auto-requeue is off (``trainer.plugins`` in ``conf/trainer/default.yaml`` gets a
``SLURMEnvironment(auto_requeue=False)`` in a SLURM job, see
:func:`vidaccel_train.training.cluster.cluster_plugins`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from vidaccel_train.cli import report_user_error
from vidaccel_train.errors import ConfigError

log = logging.getLogger(__name__)

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"

# The trainer keys the launcher's shape follows: one value for every job of a sweep.
_SHAPE_KEYS = ("trainer", "trainer.devices", "trainer.num_nodes", "trainer.accelerator", "trainer.strategy")
# The launcher settings that follow the trainer's where the user left them at the plugin's defaults.
_FOLLOWING = {"tasks_per_node": 1, "nodes": 1, "gpus_per_node": None}
_LAUNCHER_KEYS = ("tasks_per_node", "nodes", "gpus_per_node", "gpus_per_task", "gres")
# Times a job that reaches its time limit is requeued (the plugin's default, 0, ends it there; a
# run here resumes from its checkpoint, see vidaccel_train.training.cluster).
MAX_NUM_TIMEOUT = 3


def _gres_gpus(gres: str | None) -> int | None:
    """GPUs per node in a ``--gres`` value (``gpu:8``, ``gpu:a100:8``, ``gpu``); None without one."""
    if not gres:
        return None
    for part in str(gres).split(","):
        fields = part.strip().split(":")
        if fields[0] == "gpu":
            return int(fields[-1]) if len(fields) > 1 and fields[-1].isdigit() else 1
    return None


def settle_launcher(launcher: dict[str, Any], trainer: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """The submitit SLURM launcher's settings for a Lightning run of ``trainer``.

    Args:
        launcher: ``hydra.launcher`` as a plain dict (the plugin's keys: ``tasks_per_node``,
            ``nodes``, ``gpus_per_node``, ``gpus_per_task``, ``gres``, ...).
        trainer: ``trainer`` as a plain dict (``devices``, ``num_nodes``, ``accelerator``).
        given: the launcher keys the user set (on the command line or away from the plugin's
            default); the others among ``tasks_per_node``, ``nodes`` and ``gpus_per_node`` follow
            the trainer.

    Returns:
        The changed settings only (empty when nothing follows).

    Raises:
        ConfigError: ``trainer.devices`` not a count; tasks per node or nodes set and not the
            trainer's; GPUs asked per task (each task would see only its own) for more than one
            task per node; fewer GPUs per node than ``trainer.devices``; GPUs asked for a run on
            the CPU.
    """
    # A trainer group without num_nodes (trainer=cpu) runs on one node, as Lightning's default.
    devices, num_nodes = trainer.get("devices", 1), trainer.get("num_nodes") or 1
    accelerator = str(trainer.get("accelerator") or "auto")
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ConfigError(
            f"trainer.devices={devices!r}: on SLURM give the devices per node as a count (trainer.devices=N): "
            "each of them is one SLURM task (hydra.launcher.tasks_per_node)"
        )
    changed: dict[str, Any] = {}
    for key, want, trainer_key in (("tasks_per_node", devices, "devices"), ("nodes", num_nodes, "num_nodes")):
        have = launcher.get(key)
        if key not in given:
            if have != want:
                changed[key] = want
        elif have != want:
            raise ConfigError(
                f"hydra.launcher.{key}={have} but trainer.{trainer_key}={want}: Lightning takes one rank per "
                f"SLURM task and needs them equal (leave hydra.launcher.{key} out: it follows trainer.{trainer_key})"
            )
    tasks = changed.get("tasks_per_node", launcher.get("tasks_per_node"))
    per_task, per_node = launcher.get("gpus_per_task"), launcher.get("gpus_per_node")
    gres = _gres_gpus(launcher.get("gres"))
    asked = any(value not in (None, 0) for value in (per_task, per_node, gres))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and asked)
    if accelerator == "cpu" and asked:
        raise ConfigError(
            "GPUs asked of SLURM (hydra.launcher.gpus_per_node / gpus_per_task / gres) for trainer.accelerator=cpu: "
            "they would sit idle; drop them, or train on them with trainer.accelerator=gpu"
        )
    if not on_gpu:
        return changed
    if per_task not in (None, 0) and tasks > 1:
        raise ConfigError(
            f"hydra.launcher.gpus_per_task={per_task} with {tasks} tasks per node: each task would see only its own "
            "GPU while Lightning gives rank r of a node its r-th visible GPU; ask for the node's GPUs with "
            f"hydra.launcher.gpus_per_node={devices} instead"
        )
    # The GPUs a node's tasks see (the plugin types these counts as integers).
    node_gpus = per_node if per_node not in (None, 0) else gres
    if per_task not in (None, 0) and tasks == 1:
        node_gpus = per_task
    if node_gpus is None:
        changed["gpus_per_node"] = devices
    elif node_gpus < devices:
        raise ConfigError(
            f"{node_gpus} GPU(s) per node asked of SLURM but trainer.devices={devices}: Lightning would not find "
            f"the other GPUs; ask for hydra.launcher.gpus_per_node={devices} (or lower trainer.devices)"
        )
    return changed


def _given_keys(config: DictConfig) -> set[str]:
    """The launcher keys the user set: on the command line, or away from the plugin's default."""
    given = set()
    for override in OverridesParser.create().parse_overrides(list(config.hydra.overrides.hydra)):
        key = override.key_or_group
        if key.startswith("hydra.launcher."):
            given.add(key.split(".", 2)[2])
    for key, default in _FOLLOWING.items():
        if config.hydra.launcher.get(key) != default:
            given.add(key)
    return given


def _swept_shape_keys(config: DictConfig) -> list[str]:
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return [o.input_line for o in overrides if o.key_or_group in _SHAPE_KEYS and o.is_sweep_override()]


class SlurmLaunch(Callback):
    """Hydra callback, before a multirun's launcher is built: with the submitit SLURM launcher,
    its tasks per node, nodes and GPUs per node follow the trainer where the user left them out
    (:func:`settle_launcher`); a contradiction, or a sweep over the trainer's devices (one
    submission shapes every job alike), ends the command with one ``error:`` line (exit 2) before
    anything is submitted. Other launchers are left alone."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = config.hydra.get("launcher")
        if launcher is None or launcher.get("_target_") != SLURM_LAUNCHER:
            return
        try:
            swept = _swept_shape_keys(config)
            if swept:
                raise ConfigError(
                    f"{swept[0]}: a SLURM sweep submits every job with the same tasks and GPUs; sweep the devices "
                    "in separate commands"
                )
            # Interpolations may read ${hydra:...}, which Hydra answers once its config is set.
            HydraConfig.instance().set_config(config)
            trainer = {
                key: OmegaConf.select(config, f"trainer.{key}") for key in ("devices", "num_nodes", "accelerator")
            }
            settings = {key: OmegaConf.select(launcher, key) for key in _LAUNCHER_KEYS}
            given = _given_keys(config)
            changed = settle_launcher(settings, trainer, given)
        except ConfigError as err:
            sys.exit(report_user_error(err))
        except Exception:  # Hydra would make it a warning and submit the jobs unchecked
            log.exception("the SLURM launcher's settings could not be checked")
            sys.exit(1)
        if "max_num_timeout" not in given and not launcher.get("max_num_timeout"):
            changed["max_num_timeout"] = MAX_NUM_TIMEOUT
        if changed:
            with read_write(config.hydra), open_dict(config.hydra.launcher):
                for key, value in changed.items():
                    config.hydra.launcher[key] = value
            log.info(
                "SLURM launcher: %s (tasks, nodes and GPUs follow trainer.devices=%s, trainer.num_nodes=%s)",
                ", ".join(f"{k}={v}" for k, v in changed.items()),
                trainer.get("devices"),
                trainer.get("num_nodes") or 1,
            )
