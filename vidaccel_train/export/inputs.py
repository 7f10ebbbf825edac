"""What an export takes, as values: the models, the test batches, the clip contract and the
settings. The Lightning callback and the command line build these; nothing here knows a
LightningModule, a datamodule or a config."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from vidaccel_train.data.clips import ClipContract, Views
from vidaccel_train.errors import ConfigError, check_count, check_number
from vidaccel_train.export.target import ISAS, TOLERANCE

PRECISIONS = ("fp32", "int8")
# The CPUs an export is for: each ISA of the target checks (the XNNPACK programs run there under
# qemu-user), and x86_64, which adds the x86 program (int8, delegated to OpenVINO).
X86 = "x86_64"
TARGETS = (*ISAS, X86)


def check_precisions(precisions) -> tuple[str, ...]:
    """The precisions to export, each once, in order.

    Raises:
        ConfigError: none given, or one that is not fp32 or int8.
    """
    chosen = tuple(dict.fromkeys(str(p) for p in precisions))
    unknown = [p for p in chosen if p not in PRECISIONS]
    if not chosen or unknown:
        raise ConfigError(
            f"callbacks.export.precisions must name one or more of {list(PRECISIONS)}, got {list(precisions)}"
        )
    return chosen


@dataclass(frozen=True)
class ExportSettings:
    """How to export.

    Attributes:
        threads: threads for the runtime (XNNPACK) and eager PyTorch while timing.
        latency_repeats: timed calls per model and round at batch 1, at least (a round lasts at
            least 0.1 s: a fast program gets more calls).
        latency_rounds: rounds of timing per model, taken in turns; the lowest round median is
            the figure and the range over rounds its spread (:func:`.verify.measure_latency`).
        calibration_batches: training batches to calibrate an int8 model on, when none is given.
        precisions: which programs to write (``fp32``, ``int8``).
        target_clips: test clips the export keeps (``target_clips.npy``) with each program's
            logits on them, for checks on other CPUs; spread over the classes.
        targets: the CPUs the export is for. ``aarch64``: verify the XNNPACK programs there
            after writing them (under qemu-user, one CPU model per kernel family;
            :mod:`~vidaccel_train.export.target`). ``x86_64``: also write the x86 program,
            ``model_int8_openvino.pte`` (:mod:`~vidaccel_train.export.openvino`; needs int8).
        target_cpus: the CPU models to verify on (None: each ISA's defaults).
        target_tolerance: the largest logit difference from the same program on x86 that passes.

    Raises:
        ConfigError: unknown precisions or targets, counts below 1, a tolerance not above 0, or
            ``x86_64`` without ``int8``.
    """

    threads: int = 4
    latency_repeats: int = 10
    latency_rounds: int = 3
    calibration_batches: int = 16
    precisions: tuple[str, ...] = PRECISIONS
    target_clips: int = 8
    targets: tuple[str, ...] = ()
    target_cpus: tuple[str, ...] | None = None
    target_tolerance: float = TOLERANCE

    def __post_init__(self):
        object.__setattr__(self, "precisions", check_precisions(self.precisions))
        for name in ("threads", "latency_repeats", "latency_rounds", "calibration_batches", "target_clips"):
            check_count(f"callbacks.export.{name}", getattr(self, name))
        targets = tuple(dict.fromkeys(str(t) for t in self.targets or ()))
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            raise ConfigError(f"callbacks.export.targets must name some of {list(TARGETS)}, got {list(self.targets)}")
        if X86 in targets and "int8" not in self.precisions:
            raise ConfigError(
                f"callbacks.export.targets=[{X86}] adds the int8 x86 program: callbacks.export.precisions must "
                f"include int8, got {list(self.precisions)}"
            )
        object.__setattr__(self, "targets", targets)
        if self.target_cpus is not None:
            cpus = tuple(str(c) for c in self.target_cpus)
            if not cpus:
                raise ConfigError("callbacks.export.target_cpus is empty: name CPU models, or null for the defaults")
            object.__setattr__(self, "target_cpus", cpus)
        object.__setattr__(
            self, "target_tolerance", check_number("callbacks.export.target_tolerance", self.target_tolerance)
        )


@dataclass
class ExportInput:
    """Everything an export needs, as values.

    Attributes:
        model_name: the zoo name, for the manifest and the report.
        classes: class names in logit order.
        clip: the clip contract the model was trained and tested with (the programs' input is
            ``clip.input_shape``).
        display_aspect: how the run read pixels (``square`` or ``stored``).
        test_views: the views per video the run tested, and the export verifies, on.
        float_model: the fp32 deploy form, lowered into the fp32 program.
        eager_model: the train form run eagerly: the latency baseline ("vanilla PyTorch").
        test_batches: whole videos, ``{"video": (B, views, C, T, H, W), "label": (B,), "valid": (B,)}``;
            iterated once.
        fp32_reference: the in-framework fp32 model the fp32 program is checked against (the
            model the run tested); ``float_model`` when None.
        int8_model: the converted int8 model (QAT or PTQ) lowered into the int8 program, or None
            to calibrate ``calibration_model`` on ``calibration_batches`` here.
        int8_source: how ``int8_model`` came about, for the manifest.
        calibration_model: the trained network in its train form (PT2E exports its deploy form),
            when ``int8_model`` is None.
        calibration_batches: training batches, ``{"video": (B, C, T, H, W), ...}``, when
            ``int8_model`` is None.
        reference_logits: logits the run's test already measured on every test view,
            ``reference_fp32`` / ``reference_int8`` ``(videos, views, classes)``: taken as they are.
    """

    model_name: str
    classes: list[str]
    clip: ClipContract
    display_aspect: str
    test_views: Views
    float_model: nn.Module
    eager_model: nn.Module
    test_batches: Iterable[dict]
    fp32_reference: nn.Module | None = None
    int8_model: nn.Module | None = None
    int8_source: str | None = None
    calibration_model: nn.Module | None = None
    calibration_batches: Iterable[dict] | None = None
    reference_logits: dict[str, torch.Tensor] = field(default_factory=dict)
