"""The export callback: the product of a run is a verified program a phone can run.

Lightning glue: it takes what the export needs from the module and datamodule it is handed
(:func:`export_input`) and calls :func:`~vidaccel_train.export.artifacts.export_artifacts`,
which knows neither.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from vidaccel_train.data.clips import Views
from vidaccel_train.errors import OutputError
from vidaccel_train.export.artifacts import export_artifacts
from vidaccel_train.export.inputs import PRECISIONS, X86, ExportInput, ExportSettings
from vidaccel_train.export.manifest import Manifest
from vidaccel_train.export.target import TOLERANCE, Toolchain
from vidaccel_train.files import check_writable

log = logging.getLogger(__name__)


def tested_logits(module, datamodule, precisions) -> dict[str, torch.Tensor]:
    """The references' logits as the run's test just computed them, where that test covered the
    whole test split exactly (``VideoClassifier.test_logits``): ``reference_<precision>``."""
    recorded = getattr(module, "test_logits", None) or {}
    if module.quant_state is None:
        stages = {"fp32": "test"}  # an fp32 run's int8 reference is calibrated in the export, never tested
    else:
        stages = {"fp32": "test_fp32", "int8": "test"}
    expected = (len(datamodule.datasets["test"]), datamodule.test_views) if "test" in datamodule.datasets else None
    return {
        f"reference_{precision}": recorded[stage]
        for precision, stage in stages.items()
        if stage in recorded
        and tuple(recorded[stage].shape[:2]) == expected
        and (precision == "fp32" or precision in precisions)
    }


def export_input(module, datamodule, precisions=PRECISIONS, targets=()) -> ExportInput:
    """What ``export_artifacts`` needs, from a ``VideoClassifier`` (moved to the CPU, eval mode)
    and its ``VideoDataModule``: the deploy forms, the int8 model the run tested (or what to
    calibrate one from), the test batches, the clip contract and the test's own logits (and
    training batches to calibrate the x86 program on, for ``targets`` with x86_64)."""
    if module.device.type != "cpu":
        log.info("Exporting on the CPU: moving the model off %s", module.device)
    module = module.cpu().eval()  # the programs are CPU programs, verified on the CPU
    quantized = module.quant_state is not None
    num_frames = datamodule.clip.num_frames
    with torch.no_grad(), torch.device("cpu"):
        float_model = module.float_deploy_form(num_frames)
        int8_model = module.int8_net() if quantized and "int8" in precisions else None
        # The vanilla-PyTorch latency baseline: the train form run eagerly (its weights do not change its speed).
        eager_model = module.net if not quantized else module.fresh_train_form()
    return ExportInput(
        model_name=module.run_config["model"]["name"],
        classes=list(module.class_names or datamodule.class_names),
        clip=datamodule.clip,
        display_aspect=datamodule.display_aspect,
        test_views=Views(datamodule.test_clips, datamodule.test_crops),
        float_model=float_model,
        eager_model=eager_model,
        test_batches=datamodule.test_dataloader(),
        # The in-framework models the programs are checked against: what the run's test measured.
        fp32_reference=module.net if not quantized else float_model,
        int8_model=int8_model,
        int8_source=f"{module.quant_state.mode} model" if int8_model is not None else None,
        calibration_model=module.net if not quantized else None,
        # Calibrates an fp32 run's int8 model, and the x86 program's (any run's).
        calibration_batches=datamodule.calibration_dataloader() if not quantized or X86 in targets else None,
        reference_logits=tested_logits(module, datamodule, precisions),
    )


def check_export_folder(out_dir: str | Path) -> Path:
    """Before any work: ``out_dir`` can be written and replaced whole (the export is built
    beside it and renamed onto it, which a mount point refuses). A missing ``out_dir`` is made
    to try and removed again: the export makes it when it is complete.

    Raises:
        OutputError: naming the folder and the reason.
    """
    out_dir = Path(out_dir)
    missing = not out_dir.exists()
    check_writable(out_dir, "export folder")
    if missing:
        out_dir.rmdir()
    elif os.path.ismount(out_dir):
        raise OutputError(
            f"cannot write export folder {out_dir}: it is a mount point, and the export replaces its folder whole "
            f"(built beside it, then renamed onto it): give a folder inside it, e.g. {out_dir / 'export'}"
        )
    return out_dir


class ExportCallback(L.Callback):
    """After the test that ends a run, write ``<out_dir>`` (default ``<run dir>/export``).

    Exporting after the test means the artifacts are the tested model: the best or last
    checkpoint, quantized as the run was (QAT), or calibrated after training when it was fp32.
    Only rank 0 exports.

    Raises:
        ConfigError: unknown ``precisions`` or ``targets``, counts below 1, or the tools for a
            target missing (qemu and the cross tools for aarch64, OpenVINO and NNCF for x86_64;
            when built, before training).
        OutputError: ``out_dir`` cannot be written (when built, before training), or the disk
            filled while writing it (nothing of it is kept).
    """

    def __init__(
        self,
        enabled: bool = True,
        out_dir: str | None = None,
        threads: int | None = None,
        latency_repeats: int = 10,
        latency_rounds: int = 3,
        calibration_batches: int = 16,
        precisions: list[str] | tuple[str, ...] = PRECISIONS,
        target_clips: int = 8,
        targets: list[str] | tuple[str, ...] = (),
        target_cpus: list[str] | tuple[str, ...] | None = None,
        target_tolerance: float = TOLERANCE,
    ):
        self.enabled = enabled
        self.out_dir = out_dir
        # Never more threads than cores: an oversubscribed eager reference would flatter the programs.
        self.settings = ExportSettings(
            threads=threads or min(4, os.cpu_count() or 1),
            latency_repeats=latency_repeats,
            latency_rounds=latency_rounds,
            calibration_batches=calibration_batches,
            precisions=precisions,  # checked here: a typo fails before training, not after
            target_clips=target_clips,
            targets=tuple(targets or ()),
            target_cpus=tuple(target_cpus) if target_cpus is not None else None,
            target_tolerance=target_tolerance,
        )
        if enabled and rank_zero_only.rank == 0:
            for isa in self.settings.targets:  # the tools are there, of the right versions, before training
                if isa == X86:
                    from vidaccel_train.export.openvino import check_available

                    check_available()
                else:
                    Toolchain.find(isa)
        # So does a folder it cannot write, said by the rank that exports (the default folder is
        # in the run's own, which the run writes anyway).
        if enabled and out_dir and rank_zero_only.rank == 0:
            check_export_folder(out_dir)
        self.manifest: Manifest | None = None
        # Set by the export command line: a folder whose files (the test's confusion matrices)
        # go into the export with the programs, so that the command writes only its out_dir.
        self.include_from: Path | None = None

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
        inputs = export_input(pl_module, trainer.datamodule, self.settings.precisions, self.settings.targets)
        extra = sorted(p for p in Path(self.include_from).iterdir() if p.is_file()) if self.include_from else []
        self.manifest = export_artifacts(inputs, out_dir, self.settings, extra_files=extra)
