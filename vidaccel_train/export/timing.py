"""Timing a program in a process of its own, held to as many CPUs as threads
(:func:`time_in_own_process`; ``python -m vidaccel_train.export.timing`` is its child). Runtimes
that take a thread per core they may run on (OpenVINO inside the x86 program, which has no thread
setting through ExecuTorch) are timed on the export's thread count this way."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from vidaccel_train.errors import ArtifactError

# Generous: loading, warm-up and the timed rounds of a batch-1 program take seconds.
TIMEOUT_S = 600


def time_in_own_process(path: str | Path, threads: int, shape, repeats: int, rounds: int):
    """The batch-1 latency of the program at ``path`` on clips of ``shape`` ``(1, C, T, H, W)``
    (a :class:`~vidaccel_train.export.verify.Latency`, as ``measure_latency`` times it), timed
    in a process of its own held to the first ``threads`` logical CPUs this one may use.

    Raises:
        ArtifactError: the child could not load or run the program (its last line of errors),
            printed no figure, or ran past :data:`TIMEOUT_S`.
    """
    from vidaccel_train.export.verify import Latency

    command = [sys.executable, "-m", __name__, str(path), "--threads", str(threads)]
    command += [
        "--shape",
        ",".join(str(int(size)) for size in shape),
        "--repeats",
        str(repeats),
        "--rounds",
        str(rounds),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"{path}: timing the program in its own process took over {TIMEOUT_S} s") from None
    lines = done.stdout.strip().splitlines()
    try:
        if done.returncode != 0 or not lines:
            raise ValueError((done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1])
        return Latency(**json.loads(lines[-1]))
    except (ValueError, TypeError) as err:
        raise ArtifactError(f"{path}: timing the program in its own process failed: {err}") from None


def main(argv=None) -> None:
    """The child of :func:`time_in_own_process`: prints the latency as one JSON line."""
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("program", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus[: args.threads])  # before any runtime starts a thread
    import torch

    from vidaccel_train.export.runtime import ExecuTorchModel, set_runtime_threads
    from vidaccel_train.export.verify import measure_latency
    from vidaccel_train.quiet import native_stderr_muted

    set_runtime_threads(args.threads)
    with native_stderr_muted():
        program = ExecuTorchModel(args.program)
    clip = torch.randn(*(int(size) for size in args.shape.split(",")))
    latency = measure_latency({"program": lambda: program(clip)}, args.repeats, args.rounds)["program"]
    print(json.dumps(asdict(latency)))


if __name__ == "__main__":
    main()
