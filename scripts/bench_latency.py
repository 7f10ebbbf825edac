"""Batch-1 CPU latency of X3D runtimes, each in its own process, with ratios measured side by side.

    python scripts/bench_latency.py --models x3d_xs x3d_s --threads 1 2 --rounds 2 [--json out.json]

Every row names a runtime, a precision and a model form. The forms: *vanilla* is PyTorchVideo's
``create_x3d`` for the model's clip (Conv3d throughout); *train form* is our network as training
runs it (``create_model``: the same X3D on PyTorchVideo's mobile-CPU blocks); *deploy form* is
what our programs are made of (``to_deploy_form(model, num_frames)``: time folded into the
batch, time-major, no Conv3d). The rows, per model and thread count:

- ``eager fp32 (vanilla)``: the baseline of every "x" figure. Eager PyTorch as the framework runs
  a network (``VideoClassifier.forward``): channels-last clips
  (``clip.contiguous(memory_format=torch.channels_last_3d)``), under ``torch.inference_mode()``.
  The weights stay in the default layout: converting them too
  (``model.to(memory_format=torch.channels_last_3d)``) was no faster at batch 1 on the 2-core
  developer machine (X3D-XS, 1 thread, two tries each beside other work: vanilla 52.9-57.7 ms
  against 51.7-52.2, train form 43.4-45.7 against 37.9-43.0).
- ``torch.compile fp32 (vanilla)``: the same model and clips under ``torch.compile`` (Inductor,
  default mode) with inference freezing (``torch._inductor.config.freezing = True``, set in the
  child before compiling: weights become constants, convolutions get prepacked oneDNN weights),
  called under ``torch.inference_mode()``. The row's detail says how long compiling took.
- ``ORT fp32 (vanilla)``: ONNX Runtime's CPU provider on the vanilla network exported to ONNX
  (``torch.onnx.export``, the exporter's default opset, ``dynamo=False``).
- ``ORT int8 (vanilla, ORT QDQ)``: ONNX Runtime on that ONNX model quantized by ONNX Runtime's
  ``quantize_static``: QDQ format, uint8 activations, per-channel int8 weights (U8S8, its x86
  default), calibrated on 4 random clips; the 5-D ``GlobalAveragePool`` stays fp32 between a
  dequantize and a quantize (ONNX Runtime's QLinearGlobalAveragePool refuses it).
- ``OpenVINO fp32 (vanilla)``: OpenVINO's CPU plugin (``ov.Core().compile_model``) on the fp32
  ONNX model with ``PERFORMANCE_HINT=LATENCY``, ``INFERENCE_NUM_THREADS`` = the thread count and
  ``INFERENCE_PRECISION_HINT=f32``: fp32 arithmetic, as the label says.
- ``OpenVINO default (vanilla)``: the same without the precision hint, as a user gets it:
  OpenVINO then computes in bf16 on CPUs with AVX512-BF16 or AMX (the detail names the precision
  it chose; f32 on other CPUs).
- ``OpenVINO int8 (vanilla, NNCF)``: OpenVINO on the fp32 model quantized as OpenVINO's users do,
  with NNCF post-training quantization: ``nncf.quantize`` with its defaults (performance preset:
  symmetric int8; fast bias correction) on the OpenVINO model read from the fp32 ONNX, calibrated
  on the same 4 random clips as the ORT row, saved as OpenVINO IR; compiled with the default
  row's settings (what is not int8 runs in OpenVINO's default precision, bf16 on this kind of
  CPU). ORT's QDQ model is not used here because OpenVINO 2026.4 refuses it for the vanilla
  network: ``compile_model`` fails with "Check '!implementations.empty()' failed at
  src/plugins/intel_cpu/src/nodes/executors/executor_factory.hpp:117: No suitable
  implementations.This may indicate that the provided memory descriptors are not compatible with
  any implementation." The culprit is the stem's int8 5x1x1 depthwise Conv3d (groups =
  channels): quantizing that node alone reproduces the error, and with it left fp32 the rest of
  the QDQ model compiles; uint8 or int8 activations, per-channel or per-tensor weights, and
  leaving the average pools fp32 or not change nothing. ``--runtimes "OpenVINO int8 (vanilla,
  ORT QDQ)"`` adds that row (it prints the failure).
- ``eager fp32 (train form)``: our network, eager, as the first row.
- ``torch.compile fp32 (deploy form)``, ``ORT fp32 (deploy form)``, ``ORT int8 (deploy form, ORT
  QDQ)``, ``OpenVINO fp32 (deploy form)``, ``OpenVINO default (deploy form)``, ``OpenVINO int8
  (deploy form, NNCF)``: the same runtimes, settings and quantization recipes on our deploy-form
  fp32 model (from ``to_deploy_form``, exported to ONNX the same way): the peers on the graph our
  programs run. ``torch.compile`` gets channels-last clips here too (compiled X3D-XS deploy form,
  1 thread: 31.6 ms against 31.8 with contiguous clips, the same). OpenVINO compiles the
  deploy form's ORT QDQ model (it has no 3-D convolution): ``--runtimes "OpenVINO int8 (deploy
  form, ORT QDQ)"`` adds that row.
- ``ours .pte fp32 (deploy form)``, ``ours .pte int8 (deploy form)``: our ExecuTorch/XNNPACK
  programs (``lower_to_executorch``; int8: ``calibrate_int8`` on random clips, the weights and
  ranges do not change the speed).
- ``ours .pte int8 x86 (3-D form, OpenVINO)``: our x86 program as ``callbacks.export.targets=[x86_64]``
  makes it (``vidaccel_train.export.openvino``): the 3-D form of the deploy form, NNCF's
  ``INT8_SYM`` calibrated on 4 random clips, delegated whole to OpenVINO by ExecuTorch's backend.

Rows whose package is missing (``pip install -e ".[bench]"``: onnx, onnxruntime, openvino, nncf)
are left out with a line saying so; a row that cannot build or run prints "failed: <reason>".
The runtimes are timed one after another, each in a process of its own (the eager forms' OpenMP
threads would otherwise spin beside XNNPACK's or OpenVINO's), ``--rounds`` times in turns, with
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and each runtime's own thread setting at the thread count,
and each process held to as many cores as threads (``os.sched_setaffinity``: OpenVINO inside an
ExecuTorch program has no thread setting and takes a thread per core it may run on).
Each child times ``--repeats`` calls after ``--warmup`` (and one more) on one random clip and
reports their median; the figure is the lowest round median, the range the spread over rounds.

Prints each row with its ratio against ``eager fp32 (vanilla)``, then the int8 program against the
fastest peer (every ``torch.compile``, ORT and OpenVINO row, both model forms) and against the
fastest peer on the deploy-form graph, and the x86 program against the fastest peer, naming them;
and how long lowering took. The last line is ``x86 program vs fastest peer: A.AAx at 1 thread,
B.BBx at 2 threads (<model>)`` per model (``n/a`` where the row did not run), whatever the ratio. ``--json PATH``
writes every figure. PyTorchVideo has no X3D-tiny: for ``x3d_tiny`` (the tests' mode:
``--models x3d_tiny --threads 1 --repeats 2 --warmup 1 --rounds 1`` runs every row in about two
minutes on 2 cores, most of it lowering and Inductor's first compile) the vanilla rows run a small
``create_x3d`` at its clip (width 1.0, depth 0.5, head 256), not the same network as ours, and the
output says so.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

CALIBRATION_CLIPS = 4  # ORT's quantize_static and NNCF alike


@dataclass(frozen=True)
class Row:
    """One runtime on one model form: ``artifact`` is what it loads (built in the parent)."""

    label: str
    runtime: str  # eager | compile | ort | openvino | pte
    form: str  # vanilla | train | deploy | 3-D
    artifact: str | None = None
    precision: str | None = None  # OpenVINO's INFERENCE_PRECISION_HINT; None: its default
    peer: bool = False
    default: bool = True


X86_PROGRAM = "ours .pte int8 x86 (3-D form, OpenVINO)"
ROWS = (
    Row("eager fp32 (vanilla)", "eager", "vanilla"),
    Row("torch.compile fp32 (vanilla)", "compile", "vanilla", peer=True),
    Row("ORT fp32 (vanilla)", "ort", "vanilla", "onnx fp32 vanilla", peer=True),
    Row("ORT int8 (vanilla, ORT QDQ)", "ort", "vanilla", "onnx qdq vanilla", peer=True),
    Row("OpenVINO fp32 (vanilla)", "openvino", "vanilla", "onnx fp32 vanilla", "f32", peer=True),
    Row("OpenVINO default (vanilla)", "openvino", "vanilla", "onnx fp32 vanilla", peer=True),
    Row("OpenVINO int8 (vanilla, NNCF)", "openvino", "vanilla", "nncf vanilla", peer=True),
    Row("OpenVINO int8 (vanilla, ORT QDQ)", "openvino", "vanilla", "onnx qdq vanilla", peer=True, default=False),
    Row("eager fp32 (train form)", "eager", "train"),
    Row("torch.compile fp32 (deploy form)", "compile", "deploy", peer=True),
    Row("ORT fp32 (deploy form)", "ort", "deploy", "onnx fp32 deploy", peer=True),
    Row("ORT int8 (deploy form, ORT QDQ)", "ort", "deploy", "onnx qdq deploy", peer=True),
    Row("OpenVINO fp32 (deploy form)", "openvino", "deploy", "onnx fp32 deploy", "f32", peer=True),
    Row("OpenVINO default (deploy form)", "openvino", "deploy", "onnx fp32 deploy", peer=True),
    Row("OpenVINO int8 (deploy form, NNCF)", "openvino", "deploy", "nncf deploy", peer=True),
    Row("OpenVINO int8 (deploy form, ORT QDQ)", "openvino", "deploy", "onnx qdq deploy", peer=True, default=False),
    Row("ours .pte fp32 (deploy form)", "pte", "deploy", "pte fp32"),
    Row("ours .pte int8 (deploy form)", "pte", "deploy", "pte int8"),
    Row(X86_PROGRAM, "pte", "3-D", "pte int8 openvino"),
)
BY_LABEL = {row.label: row for row in ROWS}
BASELINE = "eager fp32 (vanilla)"
OURS_INT8 = "ours .pte int8 (deploy form)"

# The vanilla network per zoo model: create_x3d's defaults are X3D-S's (XS and M differ only in
# their clip), L is deeper. X3D-tiny has no PyTorchVideo counterpart: a small vanilla X3D stands in.
VANILLA = {
    "x3d_xs": {},
    "x3d_s": {},
    "x3d_m": {},
    "x3d_l": {"depth_factor": 5.0},
    "x3d_tiny": {"width_factor": 1.0, "depth_factor": 0.5, "head_dim_out": 256},
}
STAND_IN = {"x3d_tiny"}


def needs(row: Row) -> tuple[str, ...]:
    """The packages a row needs besides the project's own."""
    artifact = row.artifact or ""
    packages = ("onnx",) if artifact.startswith(("onnx", "nncf")) else ()
    if row.runtime == "ort" or artifact.startswith("onnx qdq"):
        packages += ("onnxruntime",)
    if row.runtime == "openvino":
        packages += ("openvino",)
    if artifact.startswith("nncf") or artifact == "pte int8 openvino":
        packages += ("openvino", "nncf")
    return tuple(dict.fromkeys(packages))


# ------------------------------------------------------------------------------- building


def clip_shape(name: str) -> tuple[int, int, int, int]:
    from vidaccel_train.models.zoo import zoo_entry

    entry = zoo_entry(name)
    return (3, entry.num_frames, entry.crop_size, entry.crop_size)


def vanilla_model(name: str, shape: tuple[int, ...]):
    """PyTorchVideo's ``create_x3d`` at ``name``'s clip."""
    from pytorchvideo.models.x3d import create_x3d

    if name not in VANILLA:
        raise KeyError(f"no vanilla create_x3d settings for {name}")
    _, frames, size, _ = shape
    return create_x3d(input_clip_length=frames, input_crop_size=size, model_num_class=400, **VANILLA[name]).eval()


def train_form(name: str):
    from vidaccel_train.models import create_model

    return create_model(name, num_classes=400).eval()


def deploy_form(name: str, shape: tuple[int, ...]):
    from vidaccel_train.models.deploy import to_deploy_form

    return to_deploy_form(train_form(name), shape[1]).eval()


def build_programs(name: str, folder: Path) -> dict[str, Path]:
    """Our two ``.pte`` programs of ``name`` in ``folder``."""
    import torch

    from vidaccel_train.export import lower_to_executorch
    from vidaccel_train.export.artifacts import calibrate_int8
    from vidaccel_train.files import write_atomic

    shape = clip_shape(name)
    example = torch.randn(1, *shape)
    ours = train_form(name)
    fp32 = lower_to_executorch(deploy_form(name, shape), example)
    calibration = [{"video": torch.randn(2, *shape)} for _ in range(2)]
    _, int8_model = calibrate_int8(ours, shape, calibration, len(calibration))
    int8 = lower_to_executorch(int8_model, example)
    return {
        "pte fp32": write_atomic(folder / f"{name}_fp32.pte", fp32.buffer),
        "pte int8": write_atomic(folder / f"{name}_int8.pte", int8.buffer),
    }


def build_x86_program(name: str, folder: Path) -> dict[str, Path]:
    """Our x86 program of ``name`` as the export makes it (``callbacks.export.targets=[x86_64]``):
    the 3-D form of the deploy form, NNCF int8 calibrated on random clips, delegated to OpenVINO."""
    import torch

    from vidaccel_train.export import openvino
    from vidaccel_train.files import write_atomic
    from vidaccel_train.models.conv3d_form import to_conv3d_form

    shape = clip_shape(name)
    example = torch.randn(1, *shape)
    model = to_conv3d_form(deploy_form(name, shape))
    clips = openvino.calibration_clips([{"video": torch.randn(2, *shape)} for _ in range(2)], 2)
    program = openvino.lower_to_openvino(openvino.quantize(model, example, clips), example)
    return {"pte int8 openvino": write_atomic(folder / f"{name}_int8_openvino.pte", program.buffer)}


def calibration_clips(shape: tuple[int, ...]) -> list:
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, *shape), dtype=np.float32) for _ in range(CALIBRATION_CLIPS)]


def onnx_path(name: str, folder: Path, form: str) -> Path:
    return folder / f"{name}_{form}.onnx"


def build_onnx(name: str, folder: Path, form: str) -> dict[str, Path]:
    """``form``'s fp32 model as ONNX and, with onnxruntime, ORT's static QDQ int8 of it (uint8
    activations, per-channel int8 weights, 5-D global average pools left fp32)."""
    import onnx
    import torch

    shape = clip_shape(name)
    model = vanilla_model(name, shape) if form == "vanilla" else deploy_form(name, shape)
    fp32 = onnx_path(name, folder, form)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes read as Python ints
        torch.onnx.export(model, (torch.randn(1, *shape),), str(fp32), input_names=["clip"], dynamo=False)
    built = {f"onnx fp32 {form}": fp32}
    if importlib.util.find_spec("onnxruntime") is None:
        return built
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Clips(CalibrationDataReader):
        def __init__(self):
            self.clips = iter([{"clip": clip} for clip in calibration_clips(shape)])

        def get_next(self):
            return next(self.clips, None)

    int8 = folder / f"{name}_{form}_qdq.onnx"
    # ONNX Runtime's QLinearGlobalAveragePool refuses X3D's 5-D pools ("out of computation range"):
    # they stay fp32 between a dequantize and a quantize. The deploy form has none.
    pools = [node.name for node in onnx.load(str(fp32)).graph.node if node.op_type == "GlobalAveragePool"]
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing", one line per bias
    try:
        quantize_static(
            str(fp32),
            str(int8),
            Clips(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,  # U8S8, ONNX Runtime's x86 default (QInt8 trips its 3-D average pool)
            weight_type=QuantType.QInt8,
            nodes_to_exclude=pools,
        )
    finally:
        logging.getLogger().setLevel(quiet)
    return {**built, f"onnx qdq {form}": int8}


def build_nncf(name: str, folder: Path, form: str) -> dict[str, Path]:
    """NNCF's post-training int8 of ``form``'s fp32 ONNX model (from :func:`build_onnx`) read by
    OpenVINO, as OpenVINO IR."""
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)
    model = ov.Core().read_model(str(onnx_path(name, folder, form)))
    clips = calibration_clips(clip_shape(name))
    with contextlib.redirect_stdout(sys.stderr):  # its progress bars: stdout is the table
        quantized = nncf.quantize(model, nncf.Dataset(clips), subset_size=len(clips))
    path = folder / f"{name}_{form}_nncf.xml"
    ov.save_model(quantized, str(path), compress_to_fp16=False)  # the fp32 constants as they were
    return {f"nncf {form}": path}


def built(folder: Path, name: str, key: str, build) -> tuple[dict[str, Path], float | None]:
    """What ``build()`` makes for ``name`` in ``folder`` and the seconds it took; reused (``None``
    seconds) when a listing of it is there."""
    listing = folder / f"{name}.{key}.json"
    if listing.is_file():
        return {artifact: Path(path) for artifact, path in json.loads(listing.read_text()).items()}, None
    started = time.perf_counter()
    artifacts = build()
    seconds = time.perf_counter() - started
    listing.write_text(json.dumps({artifact: str(path) for artifact, path in artifacts.items()}))
    return artifacts, seconds


def build_all(name: str, folder: Path, rows: list[Row]) -> tuple[dict[str, Path], dict[str, str], list[str]]:
    """The artifacts ``rows`` load, the build errors by artifact, and a line per build."""
    wanted = {row.artifact for row in rows if row.artifact}
    artifacts: dict[str, Path] = {}
    errors: dict[str, str] = {}
    lines: list[str] = []
    steps = []  # (title, listing key, what it makes, what it needs, build)
    if wanted & {"pte fp32", "pte int8"}:
        steps.append(
            ("lowering fp32 + int8", "programs", ("pte fp32", "pte int8"), None, lambda: build_programs(name, folder))
        )
    if "pte int8 openvino" in wanted:
        made = ("pte int8 openvino",)
        steps.append(
            ("lowering the x86 program", "program_openvino", made, None, lambda: build_x86_program(name, folder))
        )
    for form in ("vanilla", "deploy"):
        onnx_fp32, made = f"onnx fp32 {form}", (f"onnx fp32 {form}", f"onnx qdq {form}")
        if wanted & {*made, f"nncf {form}"}:
            steps.append((f"ONNX {form}", f"onnx_{form}", made, None, lambda form=form: build_onnx(name, folder, form)))
        if f"nncf {form}" in wanted:
            nncf = (f"nncf {form}",)
            steps.append(
                (f"NNCF {form}", f"nncf_{form}", nncf, onnx_fp32, lambda form=form: build_nncf(name, folder, form))
            )
    for title, key, makes, source, build in steps:
        if source in errors:  # nothing to start from
            errors.update(dict.fromkeys(makes, errors[source]))
            continue
        try:
            made, seconds = built(folder, name, key, build)
        except Exception as error:  # a row that cannot build says why; the others still run
            reason = f"building: {one_line(error)}"
            errors.update(dict.fromkeys(makes, reason))
            lines.append(f"{title} failed: {reason}")
            continue
        artifacts.update(made)
        lines.append(f"{title} {seconds:.1f} s" if seconds is not None else f"{title} reused from {folder}")
    return artifacts, errors, lines


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and the last lines of its message (OpenVINO's span several)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {' '.join(lines[-2:])}" if lines else type(error).__name__


# ------------------------------------------------------------------------------- timing (child)


def median_ms(run, repeats: int, warmup: int) -> float:
    """The median of ``repeats`` timed calls after ``warmup`` untimed ones, a 20 ms pause and one
    more: ``vidaccel_train.export.verify.measure_latency``'s single round, without importing torch
    (the ONNX Runtime and OpenVINO children never load it)."""
    for _ in range(warmup):
        run()
    time.sleep(0.02)
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def runner(row: Row, name: str, shape: tuple[int, ...], artifact: str | None, threads: int):
    """A callable running one batch-1 clip through ``row``, built in this (child) process, and a detail."""
    if row.runtime in ("ort", "openvino"):
        import numpy as np

        clip = np.random.default_rng(1).standard_normal((1, *shape), dtype=np.float32)
        if row.runtime == "ort":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = onnxruntime.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
            feed = {"clip": clip}
            return lambda: session.run(None, feed), f"onnxruntime {onnxruntime.__version__}"
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        if row.precision:
            config["INFERENCE_PRECISION_HINT"] = row.precision
        compiled = ov.Core().compile_model(artifact, "CPU", config)
        request = compiled.create_infer_request()
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        streams = compiled.get_property("NUM_STREAMS")
        detail = f"openvino {ov.__version__.split('-')[0]}, computes {precision}, {streams} stream"
        return lambda: request.infer({0: clip}), detail

    import torch

    torch.set_num_threads(threads)
    clip = torch.randn(1, *shape)
    if row.runtime == "pte":
        from vidaccel_train.export.runtime import ExecuTorchModel, set_runtime_threads

        set_runtime_threads(threads)  # before loading: XNNPACK takes its pool when a program loads
        program = ExecuTorchModel(artifact)
        backend = "OpenVINO" if row.form == "3-D" else "XNNPACK"
        return lambda: program(clip), f"executorch, {backend}"
    if row.form == "vanilla":
        model = vanilla_model(name, shape)
    else:
        model = train_form(name) if row.form == "train" else deploy_form(name, shape)
    clip = clip.contiguous(memory_format=torch.channels_last_3d)  # as VideoClassifier.forward runs a network
    layout = "channels-last clip" if clip.is_contiguous(memory_format=torch.channels_last_3d) else "contiguous clip"
    if row.runtime == "eager":

        def run():
            with torch.inference_mode():
                return model(clip)

        return run, layout
    import torch._inductor.config

    torch._inductor.config.freezing = True
    compiled = torch.compile(model)

    def run():
        with torch.inference_mode():
            return compiled(clip)

    started = time.perf_counter()
    run()  # compiles
    return run, f"{layout}, frozen, compiled in {time.perf_counter() - started:.0f} s"


def child(args) -> None:
    row = BY_LABEL[args.child]
    # Held to as many cores as threads, before any runtime starts one: a runtime that takes a
    # thread per core it may run on (OpenVINO inside our x86 program) runs on these alone.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads[0]])
    shape = tuple(int(size) for size in args.shape.split(","))
    try:
        run, detail = runner(row, args.model, shape, args.artifact, args.threads[0])
        result = {"median_ms": median_ms(run, args.repeats, args.warmup), "detail": detail}
    except Exception as error:
        result = {"error": one_line(error)}
    print(json.dumps(result))


def time_in_own_process(row: Row, name: str, artifact: Path | None, threads: int, args) -> dict:
    """The median of one child's runs in ms and its detail, or ``{"error": reason}``."""
    shape = ",".join(map(str, clip_shape(name)))
    command = [sys.executable, __file__, "--child", row.label, "--model", name, "--shape", shape]
    command += ["--threads", str(threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if artifact is not None:
        command += ["--artifact", str(artifact)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        return json.loads(lines[-1])
    reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return {"error": reason}


# ------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["x3d_xs", "x3d_s"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2, help="each runtime is timed once per round, in turn")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per process")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--runtimes",
        nargs="+",
        choices=[row.label for row in ROWS],
        default=[row.label for row in ROWS if row.default],
        metavar="ROW",
        help="rows to time (default: all but OpenVINO on ORT's QDQ models); the baseline always runs",
    )
    parser.add_argument("--keep", type=Path, help="build the programs in this folder, or reuse those it has")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--child", choices=list(BY_LABEL), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    labels = list(dict.fromkeys([BASELINE, *args.runtimes]))  # every ratio is against the baseline
    rows = [BY_LABEL[label] for label in labels]
    missing = sorted({package for row in rows for package in needs(row) if importlib.util.find_spec(package) is None})
    if missing:
        left_out = [row.label for row in rows if set(needs(row)) & set(missing)]
        print(f"{', '.join(missing)} not installed (pip install -e '.[bench]'): left out {'; '.join(left_out)}")
        rows = [row for row in rows if row.label not in left_out]
    report = {"machine": machine(), "settings": vars_for_json(args), "baseline": BASELINE, "models": {}}
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            report["models"][name] = bench_model(name, rows, folder, args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(x86_line(report))


def bench_model(name: str, rows: list[Row], folder: Path, args) -> dict:
    shape = clip_shape(name)
    artifacts, build_errors, built_lines = build_all(name, folder, rows)
    print(f"\n{name}: input (1, {', '.join(map(str, shape))}); " + "; ".join(built_lines))
    vanilla = ", ".join(f"{key}={value}" for key, value in VANILLA.get(name, {}).items()) or "X3D defaults"
    note = None
    if name in STAND_IN:
        note = (
            f"PyTorchVideo has no {name}: the vanilla rows run a small create_x3d ({vanilla}) at its clip, "
            "not the same network as ours; ratios across model forms compare different networks"
        )
        print(f"  note: {note}")
    figures = {"input": [1, *shape], "builds": built_lines, "note": note, "threads": {}}
    for threads in args.threads:
        rounds: dict[str, list[float]] = {row.label: [] for row in rows}
        details: dict[str, str] = {}
        errors = {row.label: build_errors[row.artifact] for row in rows if row.artifact in build_errors}
        for _ in range(args.rounds):
            for row in rows:
                if row.label in errors:
                    continue
                result = time_in_own_process(row, name, artifacts.get(row.artifact), threads, args)
                if "error" in result:
                    errors[row.label] = result["error"]
                else:
                    rounds[row.label].append(result["median_ms"])
                    details[row.label] = result["detail"]
        figures["threads"][str(threads)] = print_report(name, threads, rows, rounds, details, errors, args)
    return figures


def print_report(name, threads, rows, rounds, details, errors, args) -> dict:
    best = {label: min(ms) for label, ms in rounds.items() if ms and label not in errors}
    print(
        f"  {name}, threads={threads}: lowest of {args.rounds} round medians ({args.repeats} runs each), "
        f"range over rounds, ratio against {BASELINE}"
    )
    baseline = best.get(BASELINE)
    table = {}
    for row in rows:
        label = row.label
        if label in errors:
            print(f"    {label:40s} failed: {errors[label][:300]}")
            table[label] = {"failed": errors[label]}
            continue
        ms = rounds[label]
        ratio = baseline / best[label] if baseline else None
        shown = f"{ratio:6.2f}x" if ratio else "   n/a"
        print(f"    {label:40s} {best[label]:8.2f} ms  ({min(ms):.2f}-{max(ms):.2f})  {shown}  [{details[label]}]")
        table[label] = {
            "ms": best[label],
            "low_ms": min(ms),
            "high_ms": max(ms),
            "ratio": ratio,
            "detail": details[label],
            "peer": row.peer,
            "form": row.form,
        }
    summary = {"rows": table}
    for key, title, form in (
        ("fastest_peer", "the fastest peer", None),
        ("fastest_deploy_peer", "the fastest peer on the deploy-form graph", "deploy"),
    ):
        peers = {
            row.label: best[row.label] for row in rows if row.peer and row.label in best and form in (None, row.form)
        }
        if peers and OURS_INT8 in best:
            fastest = min(peers, key=peers.get)
            ratio = peers[fastest] / best[OURS_INT8]
            print(f"    {OURS_INT8} against {title} ({fastest}): {ratio:.2f}x")
            summary[key] = {"peer": fastest, "ratio": ratio}
    peers = {row.label: best[row.label] for row in rows if row.peer and row.label in best}
    if peers and X86_PROGRAM in best:
        fastest = min(peers, key=peers.get)
        ratio = peers[fastest] / best[X86_PROGRAM]
        print(f"    {X86_PROGRAM} against the fastest peer ({fastest}): {ratio:.2f}x")
        summary["x86_program"] = {"peer": fastest, "ratio": ratio}
    return summary


def x86_line(report: dict) -> str:
    """The last line: the x86 program against the fastest peer, per thread count, per model."""
    parts = []
    for name, figures in report["models"].items():
        ratios = []
        for threads, summary in figures["threads"].items():
            unit = "thread" if threads == "1" else "threads"
            x86 = summary.get("x86_program")
            ratios.append(f"{x86['ratio']:.2f}x at {threads} {unit}" if x86 else f"n/a at {threads} {unit}")
        parts.append(f"{', '.join(ratios)} ({name})")
    return "x86 program vs fastest peer: " + "; ".join(parts)


def machine() -> dict:
    info = {"python": platform.python_version(), "cores": os.cpu_count(), "cpu": platform.processor()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def vars_for_json(args) -> dict:
    child_only = {"child", "model", "shape", "artifact"}
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in vars(args).items()
        if key not in child_only
    }


if __name__ == "__main__":
    main()
