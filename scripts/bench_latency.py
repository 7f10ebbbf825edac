"""Batch-1 CPU latency of X3D forms, side by side in one run, with each ratio against vanilla.

    python scripts/bench_latency.py --models x3d_xs x3d_s --threads 1 4

Per model: PyTorchVideo's vanilla ``create_x3d`` in eager fp32 (the seed's baseline), our train
form in eager fp32, and our XNNPACK ExecuTorch programs in fp32 and int8 (post-training
calibrated on random clips: weights and ranges do not change the speed). Also prints how long
lowering both programs took. Medians of ``--repeats`` runs after warm-up, forms interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from pytorchvideo.models.x3d import create_x3d

from vidaccel_train.export import ExecuTorchModel, lower_to_executorch, write_atomic
from vidaccel_train.export.artifacts import calibrate_int8
from vidaccel_train.export.verify import set_runtime_threads
from vidaccel_train.models import create_model
from vidaccel_train.models.deploy import to_deploy_form
from vidaccel_train.models.zoo import zoo_entry


def build_forms(name: str, folder: Path) -> tuple[dict, Path, Path, torch.Tensor, float]:
    """Eager modules, the two lowered programs on disk, an example clip, and the lowering time."""
    entry = zoo_entry(name)
    shape = (3, entry.num_frames, entry.crop_size, entry.crop_size)
    example = torch.randn(1, *shape)
    ours = create_model(name, num_classes=400).eval()
    vanilla = create_x3d(
        input_clip_length=entry.num_frames, input_crop_size=entry.crop_size, model_num_class=400
    ).eval()
    started = time.perf_counter()
    fp32 = lower_to_executorch(to_deploy_form(ours, entry.num_frames), example)
    calibration = [{"video": torch.randn(2, *shape)} for _ in range(2)]
    _, int8_model = calibrate_int8(ours, shape, calibration, len(calibration))
    int8 = lower_to_executorch(int8_model, example)
    export_s = time.perf_counter() - started
    eager = {"vanilla eager fp32": vanilla, "ours eager fp32": ours}
    paths = (
        write_atomic(folder / f"{name}_fp32.pte", fp32.buffer),
        write_atomic(folder / f"{name}_int8.pte", int8.buffer),
    )
    return eager, *paths, example, export_s


@torch.no_grad()
def measure(forms: dict, example: torch.Tensor, repeats: int) -> dict[str, float]:
    times = {name: [] for name in forms}
    for run in forms.values():  # warm-up
        run(example), run(example)
    for _ in range(repeats):
        for name, run in forms.items():
            start = time.perf_counter()
            run(example)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["x3d_xs", "x3d_s"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            eager, fp32_path, int8_path, example, export_s = build_forms(name, Path(folder))
            print(
                f"\n{name}: input {tuple(example.shape)}; lowering fp32 + calibrating and lowering int8: {export_s:.1f} s"
            )
            for threads in args.threads:
                # XNNPACK takes its thread pool when a program loads: set threads, then load.
                set_runtime_threads(threads)
                forms = {
                    **eager,
                    "ours .pte fp32": ExecuTorchModel(fp32_path),
                    "ours .pte int8": ExecuTorchModel(int8_path),
                }
                median = measure(forms, example, args.repeats)
                baseline = median["vanilla eager fp32"]
                print(f"  threads={threads}")
                for form, ms in median.items():
                    print(f"    {form:20s} {ms:9.2f} ms   {baseline / ms:6.2f}x vs vanilla")


if __name__ == "__main__":
    main()
