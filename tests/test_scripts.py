"""Every script under scripts/ in a tiny mode, run as a user runs them: a child process of the
project's python with ``scripts/`` and the repository root on ``PYTHONPATH`` (as
``scripts/device_check.sh`` sets it). The device check's dry run covers the scripts it calls
(make_kinetics_like, bench_train_throughput, prepare_dataset, bench_qat_step) and the GPU tests
up to their CUDA checks; setup.sh is also what CI runs first."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def run_script(script: str, *args, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """Run ``scripts/<script>`` with ``args`` under ``.venv``'s python (this one without a ``.venv``);
    fails the test with the script's output when it exits non-zero."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    path = os.pathsep.join([str(ROOT), str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [python, str(ROOT / "scripts" / script), *map(str, args)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path.rstrip(os.pathsep)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done


def installed(*packages: str) -> bool:
    return all(importlib.util.find_spec(package) is not None for package in packages)


def test_bench_latency_runs_every_runtime_in_tiny_mode(tmp_path):
    figures = tmp_path / "latency.json"
    done = run_script(
        "bench_latency.py",
        *("--models", "x3d_tiny", "--threads", "1", "--repeats", "2", "--warmup", "1", "--rounds", "1"),
        *("--json", str(figures)),
    )
    expected = [
        "eager fp32 (vanilla)",
        "torch.compile fp32 (vanilla)",
        "eager fp32 (train form)",
        "torch.compile fp32 (deploy form)",
        "ours .pte fp32 (deploy form)",
        "ours .pte int8 (deploy form)",
    ]
    if installed("onnx", "onnxruntime"):
        expected += [f"ORT fp32 ({form})" for form in ("vanilla", "deploy form")]
        expected += [f"ORT int8 ({form}, ORT QDQ)" for form in ("vanilla", "deploy form")]
    if installed("onnx", "openvino"):
        expected += [f"OpenVINO {kind} ({form})" for kind in ("fp32", "default") for form in ("vanilla", "deploy form")]
    if installed("onnx", "openvino", "nncf"):
        expected += [f"OpenVINO int8 ({form}, NNCF)" for form in ("vanilla", "deploy form")]
    if installed("openvino", "nncf"):
        expected += ["ours .pte int8 x86 (3-D form, OpenVINO)"]

    report = json.loads(figures.read_text())
    model = report["models"]["x3d_tiny"]
    result = model["threads"]["1"]
    rows = result["rows"]
    assert sorted(rows) == sorted(expected), done.stdout
    failed = {label: row["failed"] for label, row in rows.items() if "failed" in row}
    assert not failed, done.stdout
    assert "failed" not in done.stdout
    for label, row in rows.items():
        assert row["ms"] > 0, label
        # The printed table carries the same figure as the JSON.
        assert any(
            line.strip().startswith(f"{label} ") and f"{row['ms']:.2f} ms" in line for line in done.stdout.splitlines()
        ), label
    assert "no x3d_tiny" in model["note"]  # the vanilla rows run a stand-in, and the output says so

    # Every ratio is against eager PyTorch as the framework runs it: channels-last clips.
    assert report["baseline"] == "eager fp32 (vanilla)"
    baseline = rows["eager fp32 (vanilla)"]
    assert baseline["detail"].startswith("channels-last clip")
    assert rows["eager fp32 (train form)"]["detail"].startswith("channels-last clip")
    assert "frozen" in rows["torch.compile fp32 (vanilla)"]["detail"]
    for label, row in rows.items():
        assert row["ratio"] == pytest.approx(baseline["ms"] / row["ms"]), label
    if installed("onnx", "openvino"):
        assert "computes f32" in rows["OpenVINO fp32 (vanilla)"]["detail"]  # the precision hint held

    # The int8 program against the fastest peer, over all peers and on the deploy-form graph alone.
    ours = rows["ours .pte int8 (deploy form)"]["ms"]
    for key, forms in (("fastest_peer", {"vanilla", "deploy"}), ("fastest_deploy_peer", {"deploy"})):
        peers = {label: row["ms"] for label, row in rows.items() if row["peer"] and row["form"] in forms}
        assert peers and not any(label.startswith("eager") for label in peers)
        fastest = min(peers, key=peers.get)
        assert result[key]["peer"] == fastest
        assert result[key]["ratio"] == pytest.approx(peers[fastest] / ours)
        assert f"({fastest}): {peers[fastest] / ours:.2f}x" in done.stdout

    # The last line: the x86 program against the fastest peer, whatever the ratio.
    last = done.stdout.strip().splitlines()[-1]
    if installed("openvino", "nncf"):
        assert rows["ours .pte int8 x86 (3-D form, OpenVINO)"]["detail"] == "executorch, OpenVINO"
        peers = {label: row["ms"] for label, row in rows.items() if row["peer"]}
        fastest = min(peers, key=peers.get)
        ratio = peers[fastest] / rows["ours .pte int8 x86 (3-D form, OpenVINO)"]["ms"]
        assert result["x86_program"] == {"peer": fastest, "ratio": pytest.approx(ratio)}
        assert last == f"x86 program vs fastest peer: {ratio:.2f}x at 1 thread (x3d_tiny)"
    else:
        assert last == "x86 program vs fastest peer: n/a at 1 thread (x3d_tiny)"


# ------------------------------------------------------------------------------- every other script, tiny


def test_bench_data_compares_every_variant_with_stock_pytorchvideo(tiny_dataset):
    done = run_script(
        "bench_data.py",
        "--root",
        tiny_dataset,
        "--model",
        "x3d_tiny",
        "--workers",
        "1",
        "--batch-size",
        "2",
        "--batches",
        "2",
        "--clips-per-video",
        "2",
    )
    rates = re.findall(r"^  (.+?)\s+([\d.]+) clips/s(?:\s+([\d.]+)x stock)?$", done.stdout, re.M)
    assert [name for name, _, _ in rates][0] == "pytorchvideo.data.Kinetics (PyAV)"
    assert len(rates) == 6 and all(float(rate) > 0 for _, rate, _ in rates), done.stdout
    stock = float(rates[0][1])
    for _, rate, ratio in rates[1:]:
        assert float(ratio) == pytest.approx(float(rate) / stock, rel=0.02, abs=0.01)


def test_bench_live_serves_a_camera_like_stream_to_predict_live_at_each_thread_count(smoke_run, tmp_path):
    done = run_script(
        "bench_live.py",
        *("--artifact", smoke_run / "export", "--seconds", "3", "--size", "160x128", "--threads", "1", "2"),
        *("--cache", tmp_path / "cache", "--json", tmp_path / "live.json"),
    )
    figures = json.loads((tmp_path / "live.json").read_text())
    rows = figures["rows"]
    assert [r["threads"] for r in rows] == [1, 2] and figures["stride_s"] == pytest.approx(0.8)
    for row in rows:  # 3 s of a 30 fps source after the first window (0.8 s each), then Ctrl-C
        assert row["ended"] == "interrupted" and 3 <= row["windows"] + row["skipped"] <= 9, row
        assert 3 * 30 <= row["frames"] <= 9 * 30 and row["cpu_percent"] > 0 and row["lag_p95_s"] > 0, row
    last = done.stdout.splitlines()[-1]
    assert re.fullmatch(
        r"live x3d_tiny at 160x128 30 fps, stride 0\.80 s: lag p95 \d+ ms at 1 thread, \d+ ms at 2 threads; "
        r"keeps up: (yes|no)",
        last,
    ), done.stdout
    keeps_up = all(r["skipped"] == 0 and r["dropped"] == 0 and r["lag_p95_s"] < 0.8 for r in rows)
    assert last.endswith("yes" if keeps_up else "no")


def test_bench_lowering_writes_the_same_program_with_and_without_shortcuts():
    done = run_script("bench_lowering.py", "--model", "x3d_tiny", "--warmup", "0")
    assert re.search(r"shortcuts [\d.]+ s \([\d.]+x\); same program bytes: True", done.stdout), done.stdout


def test_profile_pte_groups_operator_times(tmp_path):
    done = run_script("profile_pte.py", "--model", "x3d_tiny", "--precision", "int8", "--runs", "2")
    assert re.search(r"conv", done.stdout, re.I) and re.search(r"[\d.]+ ms", done.stdout), done.stdout


def test_the_dataset_tool_aliases_check_and_copy_a_dataset(tiny_dataset, tmp_path):
    run_script("check_dataset.py", tiny_dataset, "--out", tmp_path / "index", "--workers", "1")
    summary = json.loads((tmp_path / "index" / "summary.json").read_text())
    assert summary, summary
    copy = tmp_path / "copy"
    run_script(
        "prepare_dataset.py",
        tiny_dataset,
        copy,
        "--workers",
        "1",
        "--splits",
        "test",
        "--model",
        "x3d_tiny",
        "--measure-videos",
        "1",
        "--short-side",
        "48",
    )
    assert len(list(copy.rglob("*.mp4"))) == 8  # the tiny test split: 4 classes, 2 videos each
    assert json.loads((copy / "prepare_report.json").read_text())


def test_setup_refuses_an_unknown_option_and_installs_once():
    wrong = subprocess.run(["bash", str(SCRIPTS / "setup.sh"), "bogus"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "usage" in wrong.stderr
    if not (ROOT / ".venv" / ".vidaccel-installed").is_file():
        pytest.skip("not installed by setup.sh")
    for _ in range(2):  # the first call installs only if pyproject.toml changed since; the second never
        done = subprocess.run(["bash", str(SCRIPTS / "setup.sh")], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
    assert "installing" not in done.stdout and "fetching" not in done.stdout  # the aarch64 tools too
    assert (ROOT / ".venv/share/vidaccel_train/targets/aarch64/.installed").is_file()
    stamp = (ROOT / ".venv" / ".vidaccel-installed").read_text().strip()
    assert stamp == hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def _device_check_dry_run(out, *part):
    done = subprocess.run(
        ["bash", str(SCRIPTS / "device_check.sh"), str(out), "--dry-run", *part],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
    )
    report = json.loads((out / "device_check.json").read_text())
    failed = [s for s in report["steps"] if s["rc"] != 0]
    assert done.returncode == 0 and not failed, (failed, done.stdout[-4000:])
    return report


def _assert_speed_steps(report):
    steps = {s["step"] for s in report["steps"]}
    assert {"env", "kinetics_like", "prepare_copy"} <= steps
    assert any(s.startswith("throughput_") for s in steps) and any(s.startswith("qat_step_") for s in steps)
    # bench_train_throughput.py: both modes, the three sources, and the ratio of the two it prints.
    assert report["throughput"], report["steps"]
    for figures in report["throughput"].values():
        assert figures["model"] == "x3d_tiny" and figures["items"] == 16
        for mode in ("fp32", "qat"):
            rates = figures[mode]
            assert all(rates[k] > 0 for k in ("in-memory", "pipeline", "in-memory NCTHW")), rates
            assert rates["ratio"] == pytest.approx(rates["pipeline"] / rates["in-memory"])
    # prepare_dataset.py's report on make_kinetics_like.py's set (2 classes, 2 train videos each).
    assert report["prepare_copy"], report["steps"]


def test_device_check_dry_run_of_its_scripts_part_and_the_refusal_without_cuda(tmp_path):
    """``device_check.sh --dry-run --part speed``: the part made of scripts (make_kinetics_like,
    bench_train_throughput, prepare_dataset, bench_qat_step) on the CPU at tiny sizes; and a real
    device check refuses a machine without CUDA instead of measuring its CPU."""
    _assert_speed_steps(_device_check_dry_run(tmp_path / "check", "--part", "speed"))
    refused = subprocess.run(
        ["bash", str(SCRIPTS / "device_check.sh"), str(tmp_path / "gpu"), "--part", "fits"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert refused.returncode == 3 and "no CUDA device" in refused.stdout


@pytest.mark.slow
def test_device_check_dry_run_runs_every_step_on_the_cpu(tmp_path):
    """``device_check.sh --dry-run``: every part's steps, the GPU tests up to their CUDA checks."""
    report = _device_check_dry_run(tmp_path / "check")
    assert {"gpu_fits", "gpu_qat", "cli_qat"} <= {s["step"] for s in report["steps"]}
    _assert_speed_steps(report)
    # The GPU tests ran (none skipped), each recorded as it ended.
    assert report["test_counts"] == {"passed": 10}, report["tests"]
    assert report["cli_qat_export"]["int8"]["agreement"] > 0
