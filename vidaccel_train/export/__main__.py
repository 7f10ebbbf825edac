"""Export any checkpoint of ours: ``python -m vidaccel_train.export ckpt_path=<file.ckpt> [key=value ...]``.

A Hydra entry with its own config (``conf/export.yaml``), as the training entry: the checkpoint
carries its run config, which rebuilds the model and data; ``key=value`` pairs change it
(``out_dir=...``, ``callbacks.export.threads=2``, ``data.root=...``) and Hydra checks each key
against the training config. The default output is ``<run dir>/export`` next to the
checkpoint's ``checkpoints/`` folder, and the command writes nothing outside it (the test's
confusion matrices, of the data it was given, go into it too). ``--help`` shows the options; a
mistake, or an out_dir that cannot be written, is one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vidaccel_train.cli import hydra_command, report_user_error, user_errors_end_the_command
from vidaccel_train.config import CONFIG_DIR  # also registers the config resolvers
from vidaccel_train.errors import CheckpointError, ConfigError
from vidaccel_train.export.callback import ExportCallback, check_export_folder
from vidaccel_train.export.manifest import Manifest
from vidaccel_train.models.zoo import load_checkpoint
from vidaccel_train.quiet import silence_third_party_noise
from vidaccel_train.training.module import net_builder

log = logging.getLogger("vidaccel_train.export")


def export_checkpoint(ckpt_path: str | Path, overrides: list[str] = ()) -> Manifest:
    """Export ``ckpt_path`` with ``overrides`` (``key=value``) applied to its run config;
    returns the manifest. Writes only ``out_dir`` (default ``<run dir>/export``): the programs,
    the manifest and report, and the test's confusion matrices (``confusion_matrix_test.*``:
    of the data it was given, which need not be the run's).

    Raises:
        CheckpointError: the file is missing, unsafe, or not one of ours.
        OutputError: ``out_dir`` cannot be written (before any work), or its disk filled.
    """
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_path} does not exist")
    out_dir = OmegaConf.from_dotlist(list(overrides)).get("out_dir") or ckpt_path.resolve().parent.parent / "export"
    check_export_folder(out_dir)
    checkpoint = load_checkpoint(ckpt_path)  # the safe loader: nothing in the file runs
    run_config = checkpoint.get("run_config")
    if not run_config:
        raise CheckpointError(
            f"{ckpt_path} has no run config: only checkpoints written by vidaccel_train can be exported"
        )
    if "display_aspect" not in run_config.get("data", {}):  # trained before the option: on stored pixels
        run_config = {**run_config, "data": {**run_config["data"], "display_aspect": "stored"}}
    cfg = OmegaConf.merge(OmegaConf.create(run_config), OmegaConf.from_dotlist(list(overrides)))
    # Settings the checkpoint predates (callbacks.export.targets, ...) take today's defaults.
    defaults = OmegaConf.load(Path(CONFIG_DIR) / "callbacks" / "export.yaml").export
    settings = OmegaConf.merge(defaults, (cfg.get("callbacks", {}) or {}).get("export", {}) or {})
    export_settings = {k: v for k, v in OmegaConf.to_container(settings).items() if k != "_target_"}
    export_settings.update(enabled=True, out_dir=str(out_dir))

    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module, net=net_builder(run_config)(), optimizer=instantiate(cfg.optim))
    module.run_config = run_config
    callback = ExportCallback(**export_settings)
    # The test writes its confusion matrices into the trainer's folder: a temporary one, whose
    # files the export takes into out_dir with the programs. Beside the export, in the run the
    # checkpoint came from, they would replace the run's own (of the data it was tested on).
    with tempfile.TemporaryDirectory(prefix="vidaccel-export-test-") as test_dir:
        callback.include_from = Path(test_dir)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            callbacks=[callback],
            default_root_dir=test_dir,
        )
        trainer.test(module, datamodule=datamodule, ckpt_path=str(ckpt_path), weights_only=True)
    return callback.manifest


# Keys of the export's own config, not changes to the checkpoint's run config.
_OWN_KEYS = ("ckpt_path", "out_dir")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def _main(cfg: DictConfig) -> None:
    if not cfg.get("ckpt_path"):
        sys.exit(
            report_user_error(
                ConfigError(
                    "ckpt_path is not set: python -m vidaccel_train.export ckpt_path=<run>/checkpoints/last.ckpt "
                    "(see --help)"
                )
            )
        )
    # What the command line changed, applied to the checkpoint's run config (Hydra checked each key).
    overrides = [o.lstrip("+") for o in HydraConfig.get().overrides.task if o.split("=", 1)[0] not in _OWN_KEYS]
    if cfg.out_dir:
        overrides.append(f"out_dir={cfg.out_dir}")
    silence_third_party_noise()
    # The checkpoint's callbacks (ModelCheckpoint, QAT, ...) are training's: the export needs none of them.
    warnings.filterwarnings("ignore", message=r".*callbacks used to create the checkpoint")
    with user_errors_end_the_command():
        manifest = export_checkpoint(cfg.ckpt_path, overrides)
    for artifact in manifest.artifacts:
        print(
            f"{artifact.file}: top1 {artifact.top1:.3f}, agrees with its in-framework model on "
            f"{artifact.clip_agreement:.1%} of clips (max logit error {artifact.logit_max_abs_error:.3g}), "
            f"{artifact.latency_ms:.2f} ms at {artifact.threads} threads, sha256 {artifact.sha256[:16]}…"
        )


# The command (python -m vidaccel_train.export, vidaccel-export): the overrides' syntax checked, then Hydra.
main = hydra_command(_main)


if __name__ == "__main__":
    main()
