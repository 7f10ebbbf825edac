"""Lowering time of an int8 X3D program: ExecuTorch's defaults against this project's shortcuts.

    python scripts/bench_lowering.py --model x3d_xs --repeats 1 [--warmup 1]

The int8 model is the deploy form calibrated on random clips (weights do not change the graph).
Runs alternate defaults / shortcuts in one process, after one untimed lowering that pays the
imports; prints each time, the ratio and whether the two programs are the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time

import torch

from vidaccel_train.export import lower_to_executorch
from vidaccel_train.export.artifacts import calibrate_int8
from vidaccel_train.models import create_model
from vidaccel_train.models.zoo import zoo_entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="x3d_xs")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed lowerings first (imports, first calls)")
    args = parser.parse_args()
    # As in every training or export run: importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK.
    import lightning  # noqa: F401

    entry = zoo_entry(args.model)
    shape = (3, entry.num_frames, entry.crop_size, entry.crop_size)
    calibration = [{"video": torch.randn(2, *shape)} for _ in range(2)]
    _, int8 = calibrate_int8(create_model(args.model, num_classes=400).eval(), shape, calibration, len(calibration))
    example = torch.randn(1, *shape)
    nodes = sum(1 for _ in int8.graph.nodes)
    nvml = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    print(f"{args.model} int8: {nodes} graph nodes, input {tuple(example.shape)}; PYTORCH_NVML_BASED_CUDA_CHECK={nvml}")
    for _ in range(args.warmup):
        lower_to_executorch(int8, example)  # imports and first-call costs, untimed
    seconds = {"ExecuTorch defaults": [], "shortcuts (default)": []}
    digests = {}
    for _ in range(args.repeats):
        for name, shortcuts in (("ExecuTorch defaults", False), ("shortcuts (default)", True)):
            started = time.perf_counter()
            program = lower_to_executorch(int8, example, shortcuts=shortcuts)
            seconds[name].append(time.perf_counter() - started)
            digests[name] = hashlib.sha256(program.buffer).hexdigest()
            print(f"  {name:20s} {seconds[name][-1]:6.1f} s", flush=True)
    stock, fast = (statistics.median(v) for v in seconds.values())
    same = len(set(digests.values())) == 1
    print(f"median: defaults {stock:.1f} s, shortcuts {fast:.1f} s ({stock / fast:.2f}x); same program bytes: {same}")


if __name__ == "__main__":
    main()
