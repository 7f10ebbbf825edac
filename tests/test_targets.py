"""Verified on the target: the smoke run's programs through ExecuTorch's C++ runtime, natively and
on aarch64 under qemu-user 10 (one CPU model per XNNPACK kernel family), against the x86 program;
a program tampered with one weight fails; missing or old tools are said before any work."""

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from executorch.exir._serialize._program import deserialize_pte_binary

from vidaccel_train.errors import ConfigError
from vidaccel_train.export.callback import ExportCallback
from vidaccel_train.export.inputs import ExportSettings
from vidaccel_train.export.manifest import Manifest, sha256_of
from vidaccel_train.export.runtime import ExecuTorchModel, load_verified
from vidaccel_train.export.target import (
    DEFAULT_CPUS,
    TargetVerificationError,
    Toolchain,
    check_emulator,
    check_records,
    run_program,
    verify_on_target,
)

# What each default CPU model's int8 kernels must execute: XNNPACK picks them from the features.
INT8_KERNELS = {
    "cortex-a53": ["neon"],  # no dot product: plain Advanced SIMD
    "cortex-a76": ["dotprod"],
    "neoverse-v1": ["i8mm"],
    "neoverse-n2": ["i8mm"],
    "max": ["sme", "dotprod"],  # SME outer products, dot products where SME does not apply
}


@pytest.fixture(scope="module")
def export_dir(smoke_run) -> Path:
    return smoke_run / "export"


def verify_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vidaccel_train.export.verify_target", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def tamper_one_weight(program: Path) -> bytes:
    """``program``'s bytes with one int8 weight of its first convolution changed by 64 steps."""
    data = bytearray(program.read_bytes())
    named = deserialize_pte_binary(bytes(data)).named_data
    key = next(key for key in named.pte_data if not key.startswith("scale"))
    weights = bytes(named.buffers[named.pte_data[key].buffer_index])
    offset = data.find(weights)
    assert offset > 0 and data.find(weights, offset + 1) < 0  # found, and only there
    data[offset + 5] ^= 0x40
    return bytes(data)


def phone_programs(manifest: Manifest) -> list:
    """The XNNPACK programs, which the ARM check verifies (the smoke run also writes the x86 one)."""
    return [a for a in manifest.artifacts if a.format == "executorch-xnnpack"]


def test_the_export_keeps_a_sample_spread_over_the_classes(export_dir):
    manifest = Manifest.read(export_dir)
    sample = manifest.target_sample
    clips = np.load(export_dir / sample.clips_file, allow_pickle=False)
    assert clips.dtype == np.float32 and clips.shape == (sample.clips, *manifest.input_shape[1:])
    assert sample.clips == 8 and sha256_of(export_dir / sample.clips_file) == sample.clips_sha256
    with np.load(export_dir / sample.reference_file, allow_pickle=False) as stored:
        # The phone programs' logits: the x86 program (OpenVINO) runs on x86-64 alone.
        assert (
            sorted(stored.files)
            == sorted(Path(a.file).stem for a in phone_programs(manifest))
            == [
                "model_fp32",
                "model_int8",
            ]
        )
        assert stored["model_int8"].shape == (sample.clips, len(manifest.classes))
    # 4 classes, 2 test videos each: the 8 clips are every test video, two of each class.
    assert sorted(sample.labels) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len({clip.tobytes() for clip in clips}) == len(clips)


def test_the_native_runner_gives_the_python_runtimes_logits_exactly(export_dir):
    """The C++ runner (the Module API) on x86 against ExecuTorch's Python runtime, the export's."""
    program = export_dir / "model_int8.pte"
    result = run_program(program, export_dir / "target_clips.npy", Toolchain.host())
    clips = np.load(export_dir / "target_clips.npy")
    import torch

    python = ExecuTorchModel(program)
    expected = np.stack([python(torch.from_numpy(clip[None])).numpy()[0] for clip in clips])
    assert result.logits.shape == expected.shape
    assert np.array_equal(result.logits, expected)
    assert result.runtime.startswith("executorch 1.")


def test_the_export_verified_each_program_on_each_aarch64_kernel_family(export_dir):
    manifest = Manifest.read(export_dir)
    records = {(t.file, t.cpu): t for t in manifest.targets}
    assert set(records) == {(a.file, cpu) for a in phone_programs(manifest) for cpu in DEFAULT_CPUS["aarch64"]}
    for record in records.values():
        assert record.isa == "aarch64" and record.passed and record.clips == 8
        assert record.agreement == 1.0 and record.max_logit_error <= 1e-4, record
        major = int(record.emulator.split("version ")[1].split(".")[0])
        assert record.emulator.startswith("qemu-aarch64") and major >= 10
    int8 = {cpu: records["model_int8.pte", cpu] for cpu in DEFAULT_CPUS["aarch64"]}
    assert {cpu: r.kernels for cpu, r in int8.items()} == INT8_KERNELS
    # The features each core exposes to the runtime, and so to XNNPACK's choice.
    assert "asimddp" not in int8["cortex-a53"].features and "asimddp" in int8["cortex-a76"].features
    assert "i8mm" in int8["neoverse-v1"].features and "sve2" not in int8["neoverse-v1"].features
    assert "sve2" in int8["neoverse-n2"].features and "sme" in int8["max"].features
    report = (export_dir / "report.md").read_text()
    assert "## Verified on the target" in report and "| model_int8.pte | aarch64 max | sme+dotprod |" in report
    assert "target_aarch64" in manifest.stage_seconds


def test_verify_target_on_two_cpu_models_records_and_prints(export_dir, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    result = verify_cli(copy, "--cpus", "cortex-a53,neoverse-n2", "--clips", "2", "--program", "model_int8.pte")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model_int8.pte on aarch64 cortex-a53: passed, kernels neon")
    assert lines[1].startswith("model_int8.pte on aarch64 neoverse-n2: passed, kernels i8mm")
    assert "of 2 clips" in lines[0] and lines[2].startswith("emulator: qemu-aarch64 version 1")
    records = {(t.file, t.cpu): t for t in Manifest.read(copy).targets}
    assert records["model_int8.pte", "cortex-a53"].clips == 2  # replaced the export's record
    assert records["model_int8.pte", "max"].clips == 8  # the others are kept
    refused = verify_cli(copy, "--clips", "9")
    assert refused.returncode == 2 and refused.stderr.startswith("error: --clips must be between 1 and 8")


def test_a_program_tampered_with_one_weight_fails_verification(export_dir, tmp_path, caplog):
    tampered = tmp_path / "model_int8.pte"
    tampered.write_bytes(tamper_one_weight(export_dir / "model_int8.pte"))
    with np.load(export_dir / "target_reference.npz") as stored:
        reference = stored["model_int8"]
    records = verify_on_target(tampered, export_dir / "target_clips.npy", reference, "aarch64", ["cortex-a53", "max"])
    assert [r.passed for r in records] == [False, False]
    assert all(r.max_logit_error > 1e-2 for r in records)
    with pytest.raises(TargetVerificationError, match=r"on cortex-a53 its logits are up to .* apart.*on max"):
        check_records(records)

    # The same through the command line, for a folder whose manifest lists the tampered file (a
    # file changed before its sha256 was taken): one error line, exit code 2, the failure recorded.
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    shutil.copyfile(tampered, copy / "model_int8.pte")
    manifest = Manifest.read(copy)
    manifest.artifact("model_int8.pte").sha256 = sha256_of(copy / "model_int8.pte")
    manifest.write(copy)
    result = verify_cli(copy, "--cpus", "cortex-a76", "--program", "model_int8.pte")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "error: model_int8.pte does not compute on aarch64 what it computes on x86_64: on cortex-a76"
    )
    failed = {t.cpu: t for t in Manifest.read(copy).targets if t.file == "model_int8.pte"}
    assert failed["cortex-a76"].passed is False and "**FAILED**" in (copy / "report.md").read_text()
    with caplog.at_level(logging.WARNING):
        load_verified(copy)  # runs on x86 as verified, with a warning of where it does not
    assert "failed its check on aarch64 cortex-a76" in caplog.text
    # A file changed after the export is refused before anything runs.
    (copy / "model_int8.pte").write_bytes(tamper_one_weight(export_dir / "model_int8.pte")[:-1])
    refused = verify_cli(copy, "--cpus", "cortex-a76")
    assert refused.returncode == 2 and "not the file the manifest lists" in refused.stderr


def _fake_qemu(folder: Path, version: str) -> Path:
    fake = folder / "qemu-aarch64"
    fake.write_text(f"#!/bin/sh\necho 'qemu-aarch64 version {version} (Debian)'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake


def test_an_emulator_older_than_qemu_10_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"version 7\.2\.0.*needs qemu 10\.0 or newer.*SME"):
        check_emulator(_fake_qemu(tmp_path, "7.2.0"))
    assert check_emulator(_fake_qemu(tmp_path, "10.1.2")).endswith("10.1.2 (Debian)")


def test_missing_tools_are_said_before_any_work(tmp_path, export_dir, monkeypatch):
    monkeypatch.setenv("VIDACCEL_TARGETS_DIR", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r"needs the cross compiler, qemu-aarch64.*scripts/setup\.sh"):
        Toolchain.find("aarch64")
    with pytest.raises(ConfigError, match="setup.sh"):
        ExportCallback(targets=["aarch64"])  # when built: before training
    ExportCallback(targets=["aarch64"], enabled=False)  # a disabled export needs no tools
    with pytest.raises(ConfigError, match=r"callbacks.export.targets must name some of \['aarch64', 'x86_64'\]"):
        ExportSettings(targets=("arm64",))
    result = verify_cli(export_dir, env={**os.environ, "VIDACCEL_TARGETS_DIR": str(tmp_path / "none")})
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "setup.sh" in result.stderr


def test_an_export_without_a_sample_is_told_to_export_again(export_dir, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    values = json.loads((copy / "manifest.json").read_text())
    del values["target_sample"], values["targets"]
    (copy / "manifest.json").write_text(json.dumps(values))
    assert Manifest.read(copy).targets == []
    result = verify_cli(copy)
    assert result.returncode == 2 and "no clip sample" in result.stderr
