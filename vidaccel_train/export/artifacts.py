"""Export a trained classifier as verified int8 (and fp32) ExecuTorch programs.

Writes ``model_<precision>.pte`` for each chosen precision, ``manifest.json``, ``report.md`` and
``accuracy_latency.png``. Every artifact is run through the ExecuTorch runtime on every test
view (accuracy, agreement and logit error against the in-framework model) and timed at batch 1;
each stage's seconds go in the manifest. Everything is built in a staging folder that replaces
the export folder only when all of it succeeded.

:func:`export_artifacts` takes values (:class:`~vidaccel_train.export.inputs.ExportInput`,
:class:`~vidaccel_train.export.inputs.ExportSettings`); the Lightning callback and the command
line build them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vidaccel_train.errors import OutputError
from vidaccel_train.export.executorch import lower_to_executorch
from vidaccel_train.export.inputs import X86, ExportInput, ExportSettings
from vidaccel_train.export.manifest import (
    ARTIFACT_FORMAT,
    ArtifactRecord,
    EagerReference,
    Manifest,
    TargetSample,
    sha256_of,
)
from vidaccel_train.export.report import write_report
from vidaccel_train.export.runtime import ExecuTorchModel, set_runtime_threads
from vidaccel_train.export.target import ISAS, TARGET_CLIPS, TARGET_REFERENCE, host_isa, verify_folder, write_sample
from vidaccel_train.export.timing import time_in_own_process
from vidaccel_train.export.verify import Latency, accuracy, collect_logits, fidelity, measure_latency
from vidaccel_train.files import atomic_path, remove_leftovers, write_atomic
from vidaccel_train.models.conv3d_form import to_conv3d_form
from vidaccel_train.quantization import pt2e

__all__ = ["calibrate_int8", "export_artifacts"]

log = logging.getLogger(__name__)


def calibrate_int8(net: nn.Module, input_shape, batches, count: int) -> tuple[nn.Module, nn.Module]:
    """Post-training calibration of a copy of ``net``: (observed model, converted int8 model)."""
    prepared = pt2e.prepare(net, input_shape, "ptq")
    pt2e.calibrate(prepared, batches, count)
    return prepared, pt2e.convert_int8(prepared)


def _timing(latency: Latency, threads: int) -> dict:
    """A latency as the manifest records it (:class:`~.manifest.Timing`'s fields)."""
    return {
        "latency_ms": round(latency.ms, 4),
        "latency_range_ms": [round(latency.low_ms, 4), round(latency.high_ms, 4)],
        "latency_timing": f"lowest median of {latency.rounds} rounds x {latency.runs} calls",
        "threads": threads,
    }


class ClipSample:
    """Keeps test views for target checks while the verification reads the test batches once:
    up to ``count`` videos, spread over the classes (at most ``ceil(count / classes)`` each),
    one view each (the views in turn), with where each sits in the verification's logits."""

    def __init__(self, count: int, num_classes: int):
        self.count = count
        self.per_class = -(-count // max(num_classes, 1))
        self.kept: list[tuple[int, int, torch.Tensor]] = []  # (video index, view index, clip)
        self.labels: list[int] = []  # of the kept views

    def watch(self, batches):
        """``batches`` as they are, keeping the sample on the way (readable videos counted as
        :func:`~vidaccel_train.export.verify.collect_logits` counts them)."""
        video = 0
        for batch in batches:
            valid = batch.get("valid", torch.ones(len(batch["label"]), dtype=torch.bool))
            for views, label, readable in zip(batch["video"], batch["label"], valid):
                if not readable:
                    continue
                label = int(label)
                if len(self.kept) < self.count and self.labels.count(label) < self.per_class:
                    view = len(self.kept) % len(views)
                    self.kept.append((video, view, views[view].clone()))
                    self.labels.append(label)
                video += 1
            yield batch

    def clips(self) -> torch.Tensor:
        """The kept views, ``(N, C, T, H, W)``."""
        return torch.stack([clip for _, _, clip in self.kept])

    def logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The kept views' rows of ``logits`` ``(videos, views, classes)``: ``(N, classes)``."""
        return torch.stack([logits[video, view] for video, view, _ in self.kept])


class StageClock:
    """Seconds spent per export stage, logged as each one ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 1)
        log.info("Export: %s took %.1f s", name.replace("_", " "), self.seconds[name])


# What a write fails with when the disk is full or turned read-only (EFBIG: a file size limit).
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def export_artifacts(
    inputs: ExportInput,
    out_dir: str | Path,
    settings: ExportSettings = ExportSettings(),
    extra_files: Sequence[str | Path] = (),
) -> Manifest:
    """Lower, verify, time and write the programs of ``inputs`` into ``out_dir``; returns the manifest.

    Runs on the CPU (the programs are CPU programs) with ``settings.threads`` threads, and gives
    PyTorch its own thread count back afterwards. ``extra_files`` are copied into ``out_dir``
    with the programs (the export command line's test confusion matrices). Keeps a sample of the
    test clips with each program's logits on them for checks on other CPUs, and runs those of
    ``settings.targets`` before the folder replaces ``out_dir``
    (:func:`~vidaccel_train.export.target.verify_folder`). With ``x86_64`` among the targets it
    also writes the x86 program, ``model_int8_openvino.pte`` (:mod:`~vidaccel_train.export.openvino`),
    verified and timed like the others.

    Raises:
        LoweringError: a model does not lower whole to XNNPACK (or the x86 program to OpenVINO;
            nothing is written).
        ValueError: the x86 program's calibration batches are empty.
        ArtifactError: the runtime cannot load a program just lowered, or the x86 program's
            timing process fails (nothing is written).
        RuntimeError: the test batches hold no readable video.
        OutputError: the disk filled (or turned read-only) while writing (nothing is kept).
        ConfigError: the tools for a target are missing (OpenVINO and NNCF for ``x86_64``).
        TargetVerificationError: a program's logits on a target CPU are not its logits on x86
            (nothing is written: an earlier export in ``out_dir`` stays as it was).
    """
    out_dir = Path(out_dir)
    torch_threads = torch.get_num_threads()
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out_dir.parent, out_dir.name)  # from an export that was killed
        # Whole folders change places: a reader sees the old export or the new one, never a mix.
        with torch.no_grad(), torch.device("cpu"), atomic_path(out_dir) as staging:
            staging.mkdir()
            manifest = _lower_verify_and_time(inputs, staging, settings)
            for extra in map(Path, extra_files):
                if (staging / extra.name).exists():
                    raise ValueError(f"extra file {extra} would replace the export's own {extra.name}")
                shutil.copyfile(extra, staging / extra.name)
    except OSError as err:
        if err.errno not in _DISK_ERRNOS:
            raise
        raise OutputError(
            f"cannot write export folder {out_dir}: {err.strerror or err}; nothing of this export was kept"
        ) from None
    finally:
        torch.set_num_threads(torch_threads)  # a multirun's later jobs train in this process
    log.info(
        "Exported %s",
        ", ".join(
            f"{a.file} (top1 {a.top1:.3f}, agrees on {a.clip_agreement:.1%} of clips, {a.latency_ms:.1f} ms)"
            for a in manifest.artifacts
        ),
    )
    return manifest


def _int8_reference(inputs: ExportInput, settings: ExportSettings) -> tuple[nn.Module, str]:
    """The int8 model to lower and check the int8 program against, and how it came about: the
    run's (QAT or PTQ), or for an fp32 run a copy calibrated here, as ``quant=ptq`` would."""
    if inputs.int8_model is not None:
        return inputs.int8_model, inputs.int8_source
    if inputs.calibration_model is None or inputs.calibration_batches is None:
        raise ValueError("an int8 export without an int8 model needs a model and batches to calibrate")
    _, converted = calibrate_int8(
        inputs.calibration_model, inputs.clip.input_shape[1:], inputs.calibration_batches, settings.calibration_batches
    )
    return converted, f"post-training calibration on {settings.calibration_batches} training batches"


def _x86_program(inputs: ExportInput, example: torch.Tensor, settings: ExportSettings):
    """The x86 program's int8 model (NNCF's, of the 3-D form of the run's float weights) and
    the program lowered from it (:mod:`.openvino`)."""
    from vidaccel_train.export import openvino

    if inputs.calibration_batches is None:
        raise ValueError("the x86 program needs training batches to calibrate on")
    model = to_conv3d_form(inputs.float_model)
    clips = openvino.calibration_clips(inputs.calibration_batches, settings.calibration_batches)
    quantized = openvino.quantize(model, example, clips)
    return openvino.BatchOne(quantized), openvino.lower_to_openvino(quantized, example)


def _lower_verify_and_time(inputs: ExportInput, staging: Path, settings: ExportSettings) -> Manifest:
    """Write each program into ``staging``, run it on every test view beside its in-framework
    reference, time them all, and write the manifest and report there.

    Programs are keyed by their file's stem less ``model_``: ``fp32``, ``int8`` (XNNPACK) and
    ``int8_openvino`` (the x86 program); each key's reference is ``reference_<key>``."""
    precisions = settings.precisions
    example = torch.randn(inputs.clip.input_shape)
    clock = StageClock()

    # The in-framework model each program is checked against: what the run's test measured.
    references = {"fp32": inputs.fp32_reference if inputs.fp32_reference is not None else inputs.float_model}
    source = None
    if "int8" in precisions:
        with clock.stage("int8_conversion"):
            references["int8"], source = _int8_reference(inputs, settings)
    lowered = {"fp32": inputs.float_model, "int8": references.get("int8")}

    paths = {}
    formats = dict.fromkeys(precisions, ARTIFACT_FORMAT)
    quantization = {"int8": source}
    for precision in precisions:
        with clock.stage(f"lowering_{precision}"):
            program = lower_to_executorch(lowered[precision], example)
            paths[precision] = write_atomic(staging / f"model_{precision}.pte", program.buffer)
    if X86 in settings.targets:
        from vidaccel_train.export.openvino import FORMAT, describe

        with clock.stage("lowering_int8_openvino"):
            references["int8_openvino"], program = _x86_program(inputs, example, settings)
            paths["int8_openvino"] = write_atomic(staging / "model_int8_openvino.pte", program.buffer)
            formats["int8_openvino"] = FORMAT
            quantization["int8_openvino"] = describe(settings.calibration_batches)
    portable = [key for key in paths if formats[key] == ARTIFACT_FORMAT]  # the programs for every CPU

    set_runtime_threads(settings.threads)  # before loading: XNNPACK takes its thread pool at load time
    programs = {key: ExecuTorchModel(path) for key, path in paths.items()}
    known = {
        name: logits
        for name, logits in inputs.reference_logits.items()
        if name.removeprefix("reference_") in references
    }
    sample = ClipSample(settings.target_clips, len(inputs.classes))
    with clock.stage("verification"):
        predictors = {f"reference_{key}": references[key] for key in references}
        predictors.update(programs)
        logits, labels = collect_logits(sample.watch(inputs.test_batches), predictors, known)
        clips_sha, reference_sha = write_sample(
            staging, sample.clips().numpy(), {paths[key].stem: sample.logits(logits[key]).numpy() for key in portable}
        )
    # The vanilla-PyTorch reference is the train form run eagerly as the framework runs it: on
    # channels-last clips, oneDNN's fast layout for 3-D convolutions (VideoClassifier.forward).
    eager_example = example.contiguous(memory_format=torch.channels_last_3d)
    with clock.stage("latency"):
        # Programs first: the eager model's OpenMP threads would spin beside XNNPACK's.
        runs = {key: lambda run=programs[key]: run(example) for key in portable}
        runs["eager"] = lambda: inputs.eager_model(eager_example)
        latency = measure_latency(runs, settings.latency_repeats, settings.latency_rounds)
        for key in set(paths) - set(portable):
            # OpenVINO takes every core it may run on: timed in a process held to the threads.
            latency[key] = time_in_own_process(
                paths[key], settings.threads, example.shape, settings.latency_repeats, settings.latency_rounds
            )

    artifacts = [
        ArtifactRecord(
            file=path.name,
            precision=key.split("_")[0],
            sha256=sha256_of(path),
            format=formats[key],
            quantization=quantization.get(key),
            bytes=path.stat().st_size,
            **accuracy(logits[key], labels),
            **fidelity(logits[key], logits[f"reference_{key}"]),
            **_timing(latency[key], settings.threads),
        )
        for key, path in paths.items()
    ]
    videos, views = logits["reference_fp32"].shape[:2]
    manifest = Manifest(
        model=inputs.model_name,
        classes=list(inputs.classes),
        clip=inputs.clip,
        artifacts=artifacts,
        display_aspect=inputs.display_aspect,
        test_views=inputs.test_views,
        int8_source=source,
        verified_on={"videos": videos, "clips": videos * views},
        reference_eager_fp32=EagerReference(
            **accuracy(logits["reference_fp32"], labels), **_timing(latency["eager"], settings.threads)
        ),
        stage_seconds=clock.seconds,
        target_sample=TargetSample(
            clips_file=TARGET_CLIPS,
            reference_file=TARGET_REFERENCE,
            clips=len(sample.kept),
            clips_sha256=clips_sha,
            reference_sha256=reference_sha,
            reference_isa=f"{host_isa()}, ExecuTorch's Python runtime",
            selection=f"up to {sample.per_class} test videos per class, one view each (the views in turn)",
            labels=sample.labels,
        ),
    )
    write_report(staging, manifest)
    manifest.write(staging)
    emulated = [isa for isa in settings.targets if isa in ISAS]  # x86_64 is the x86 program, made above
    for isa in emulated:  # on the staged folder: a program that fails here never replaces an export
        with clock.stage(f"target_{isa}"):
            manifest, _ = verify_folder(
                staging,
                isa,
                settings.target_cpus,
                tolerance=settings.target_tolerance,
                files=[paths[k].name for k in portable],
            )
        manifest.stage_seconds = dict(clock.seconds)
        write_report(staging, manifest)
        manifest.write(staging)
    return manifest
