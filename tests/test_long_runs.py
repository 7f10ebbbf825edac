"""Runs kept out of the default suite: full-size X3D-XS end to end (slow; GPU runs: test_gpu.py).

.venv/bin/python -m pytest -m slow      # minutes on 2 CPU cores
"""

import json
import time

import pytest

from vidaccel_train.train import run

from support import compose_config

# Measured on 2 CPU cores (docs/benchmarks.md): the main job's test top-1 is 0.99 (fp32 weights
# and int8); the floor is the README's aim and leaves room for other machines' float rounding,
# not for a recipe that stopped learning.
MAIN_JOB_FLOOR = 0.85


@pytest.mark.slow
def test_main_job_learns_quantizes_and_exports(tmp_path, data_dir):
    """The README's main job as it is (generated data, X3D-XS at 160x160 from scratch, progressive
    resizing, a QAT epoch, the int8 export): its accuracy floor, the int8 model within one test
    video of the fp32 weights, and the verified program."""
    started = time.perf_counter()
    metrics = run(compose_config(tmp_path, data_dir, []))
    minutes = (time.perf_counter() - started) / 60
    assert metrics["test_fp32/top1"] >= MAIN_JOB_FLOOR, metrics  # chance: 0.125
    assert metrics["test/top1"] >= metrics["test_fp32/top1"] - 1 / 128, metrics  # one of 128 test videos
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["model"] == "x3d_xs" and manifest["input_shape"] == [1, 3, 4, 160, 160]
    (int8,) = manifest["artifacts"]
    assert int8["top1"] == pytest.approx(metrics["test/top1"], abs=1 / 128) and int8["clip_agreement"] >= 0.97
    assert (tmp_path / "checkpoints" / "fp32.ckpt").is_file()  # what experiment=finetune starts from
    # Time is the benchmark's to judge (docs/benchmarks.md#the-main-job names machine and command); what no
    # machine can change is the share each part takes: the export (lowering both forms, verification on
    # every test clip, latency) stays a small part of a run that trains 21 epochs.
    export_s = sum(manifest["stage_seconds"].values())
    print(f"main job: {minutes:.1f} minutes, export {export_s:.0f} s ({manifest['stage_seconds']})")
    assert export_s < 0.35 * minutes * 60, (export_s, minutes)
