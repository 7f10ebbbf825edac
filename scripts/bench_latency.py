"""Batch-1 CPU latency of X3D runtimes, each in its own process, with ratios measured side by side.

    python scripts/bench_latency.py --models x3d_xs x3d_s --threads 1 2 --rounds 2

Per model it builds, once: our ExecuTorch programs in fp32 and int8 (post-training calibrated on
random clips: weights and ranges do not change the speed) and, when ``onnxruntime`` is installed,
PyTorchVideo's vanilla ``create_x3d`` exported to ONNX in fp32 and int8 (QDQ, per-channel,
calibrated the same way). Then, for each thread count and round, every runtime is timed in a
process of its own, one after another (the eager forms' OpenMP threads would otherwise spin
beside XNNPACK's): vanilla eager fp32 (the seed's baseline), vanilla under ``torch.compile``,
ONNX Runtime fp32 and int8, our train form in eager fp32, our ``.pte`` fp32 and int8.

Prints, per runtime, the median of ``--repeats`` runs after warm-up for each round (the figure is
the lowest round median, the spread the range over rounds), its ratio against vanilla eager and
the int8 program's ratio against the fastest peer (``torch.compile``, ONNX Runtime). Also how
long lowering took. A runtime whose package is missing is left out with a line saying so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VANILLA = "vanilla eager fp32"
PEERS = ("vanilla torch.compile", "onnxruntime fp32", "onnxruntime int8")
RUNTIMES = (VANILLA, *PEERS, "ours eager fp32", "ours .pte fp32", "ours .pte int8")


# ------------------------------------------------------------------------------- building


def clip_shape(name: str) -> tuple[int, int, int, int]:
    from vidaccel_train.models.zoo import zoo_entry

    entry = zoo_entry(name)
    return (3, entry.num_frames, entry.crop_size, entry.crop_size)


def vanilla_model(name: str):
    """PyTorchVideo's ``create_x3d`` for ``name``'s clip (X3D-XS and X3D-S differ only in their clip)."""
    from pytorchvideo.models.x3d import create_x3d

    _, frames, size, _ = clip_shape(name)
    return create_x3d(input_clip_length=frames, input_crop_size=size, model_num_class=400).eval()


def build_programs(name: str, folder: Path) -> tuple[dict[str, Path], float]:
    """The two ``.pte`` programs of ``name`` in ``folder``, and the seconds lowering both took."""
    import torch

    from vidaccel_train.export import lower_to_executorch, write_atomic
    from vidaccel_train.export.artifacts import calibrate_int8
    from vidaccel_train.models import create_model
    from vidaccel_train.models.deploy import to_deploy_form

    shape = clip_shape(name)
    example = torch.randn(1, *shape)
    ours = create_model(name, num_classes=400).eval()
    started = time.perf_counter()
    fp32 = lower_to_executorch(to_deploy_form(ours, shape[1]), example)
    calibration = [{"video": torch.randn(2, *shape)} for _ in range(2)]
    _, int8_model = calibrate_int8(ours, shape, calibration, len(calibration))
    int8 = lower_to_executorch(int8_model, example)
    seconds = time.perf_counter() - started
    return {
        "ours .pte fp32": write_atomic(folder / f"{name}_fp32.pte", fp32.buffer),
        "ours .pte int8": write_atomic(folder / f"{name}_int8.pte", int8.buffer),
    }, seconds


def build_onnx(name: str, folder: Path) -> tuple[dict[str, Path], float]:
    """Vanilla X3D as ONNX fp32 and int8 (static QDQ: uint8 activations, per-channel int8 weights), if onnxruntime is here."""
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    shape = clip_shape(name)
    model = vanilla_model(name)
    started = time.perf_counter()
    fp32 = folder / f"{name}.onnx"
    torch.onnx.export(model, (torch.randn(1, *shape),), str(fp32), input_names=["clip"], dynamo=False)

    class Clips(CalibrationDataReader):
        def __init__(self):
            self.clips = iter([{"clip": torch.randn(1, *shape).numpy()} for _ in range(4)])

        def get_next(self):
            return next(self.clips, None)

    int8 = folder / f"{name}_int8.onnx"
    # ONNX Runtime's QLinearGlobalAveragePool refuses X3D's 5-D pools ("out of computation range"):
    # they stay fp32 between a dequantize and a quantize.
    pools = [node.name for node in onnx.load(str(fp32)).graph.node if node.op_type == "GlobalAveragePool"]
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
    return {"onnxruntime fp32": fp32, "onnxruntime int8": int8}, time.perf_counter() - started


def built(folder: Path, name: str, build) -> tuple[dict[str, Path], float | None]:
    """What ``build`` makes for ``name`` in ``folder`` and the seconds it took; reused (``None``
    seconds) when a listing of it is there."""
    listing = folder / f"{name}.{build.__name__}.json"
    if listing.is_file():
        return {runtime: Path(path) for runtime, path in json.loads(listing.read_text()).items()}, None
    artifacts, seconds = build(name, folder)
    listing.write_text(json.dumps({runtime: str(path) for runtime, path in artifacts.items()}))
    return artifacts, seconds


# ------------------------------------------------------------------------------- timing (child)


def runner(runtime: str, name: str, artifact: str | None, threads: int):
    """A callable running one batch-1 clip through ``runtime``, built in this (child) process."""
    import torch

    torch.set_num_threads(threads)
    clip = torch.randn(1, *clip_shape(name))
    if runtime.startswith("ours .pte"):
        from executorch.runtime import Runtime

        from vidaccel_train.export.verify import set_runtime_threads

        set_runtime_threads(threads)  # before loading: XNNPACK takes its pool when a program loads
        method = Runtime.get().load_program(artifact).load_method("forward")
        return lambda: method.execute([clip])
    if runtime.startswith("onnxruntime"):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
        feed = {"clip": clip.numpy()}
        return lambda: session.run(None, feed)
    if runtime == "ours eager fp32":
        from vidaccel_train.models import create_model

        model = create_model(name, num_classes=400).eval()
    else:
        model = vanilla_model(name)
    if runtime == "vanilla torch.compile":
        model = torch.compile(model)

    def run():
        with torch.inference_mode():
            return model(clip)

    return run


def child(args) -> None:
    from vidaccel_train.export.verify import measure_latency

    run = runner(args.child, args.model, args.artifact, args.threads[0])
    timed = measure_latency({args.child: run}, args.repeats, rounds=1, min_round_s=0.0, warmup=args.warmup)
    print(json.dumps({"median_ms": timed[args.child].ms}))


def time_in_own_process(runtime: str, name: str, artifact: Path | None, threads: int, args) -> float | str:
    """The median of one child's runs in ms, or the last line of its error."""
    command = [sys.executable, __file__, "--child", runtime, "--model", name, "--threads", str(threads)]
    command += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if artifact is not None:
        command += ["--artifact", str(artifact)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1])["median_ms"]


# ------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["x3d_xs", "x3d_s"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2, help="each runtime is timed once per round, in turn")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per process")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--keep", type=Path, help="build the programs in this folder, or reuse those it has")
    parser.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    if VANILLA not in args.runtimes:
        args.runtimes.insert(0, VANILLA)  # every ratio is against it
    have_onnx = importlib.util.find_spec("onnxruntime") is not None
    if not have_onnx:
        print("onnxruntime is not installed: its two rows are left out (pip install onnxruntime onnx)")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            artifacts, lowering_s = built(folder, name, build_programs)
            if have_onnx and any(r.startswith("onnxruntime") for r in args.runtimes):
                artifacts.update(built(folder, name, build_onnx)[0])
            runtimes = [r for r in args.runtimes if not r.startswith("onnxruntime") or r in artifacts]
            lowered = f"lowering fp32 + int8 {lowering_s:.1f} s" if lowering_s else f"programs reused from {folder}"
            print(f"\n{name}: input (1, {', '.join(map(str, clip_shape(name)))}); {lowered}")
            for threads in args.threads:
                rounds: dict[str, list[float]] = {r: [] for r in runtimes}
                errors: dict[str, str] = {}
                for _ in range(args.rounds):
                    for runtime in runtimes:
                        if runtime in errors:
                            continue
                        result = time_in_own_process(runtime, name, artifacts.get(runtime), threads, args)
                        if isinstance(result, str):
                            errors[runtime] = result
                        else:
                            rounds[runtime].append(result)
                report(name, threads, rounds, errors, args)


def report(name: str, threads: int, rounds: dict[str, list[float]], errors: dict[str, str], args) -> None:
    best = {r: min(ms) for r, ms in rounds.items() if ms}
    print(
        f"  {name}, threads={threads}: lowest of {args.rounds} round medians ({args.repeats} runs each), "
        "range over rounds, ratio against vanilla eager"
    )
    baseline = best.get(VANILLA)
    for runtime, ms in rounds.items():
        if runtime in errors:
            print(f"    {runtime:22s} failed: {errors[runtime][:100]}")
            continue
        ratio = f"{baseline / best[runtime]:6.2f}x" if baseline else "   n/a"
        print(f"    {runtime:22s} {best[runtime]:8.2f} ms  ({min(ms):.2f}-{max(ms):.2f})  {ratio}")
    peers = {r: best[r] for r in PEERS if r in best}
    if peers and "ours .pte int8" in best:
        fastest = min(peers, key=peers.get)
        print(
            f"    ours .pte int8 against the fastest peer ({fastest}): {peers[fastest] / best['ours .pte int8']:.2f}x"
        )


if __name__ == "__main__":
    main()
