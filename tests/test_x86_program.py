"""The x86 program (``callbacks.export.targets=[x86_64]``): the smoke run's export writes
``model_int8_openvino.pte`` (the 3-D form, NNCF int8, delegated to OpenVINO), verified on every
test view like the XNNPACK programs; predict serves it with the same numbers; the ARM check
leaves it out (it runs on x86 alone)."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vidaccel_train.errors import ConfigError
from vidaccel_train.export.callback import ExportCallback
from vidaccel_train.export.inputs import ExportSettings
from vidaccel_train.export.manifest import Manifest
from vidaccel_train.export.runtime import load_verified

from support.runs import predict_cli

X86 = "model_int8_openvino.pte"


def test_the_export_writes_a_verified_x86_program(smoke_run):
    export = smoke_run / "export"
    manifest = Manifest.read(export)
    record = manifest.checked_artifact(export / X86)
    xnnpack = manifest.artifact("model_int8.pte")
    assert record.format == "executorch-openvino" and xnnpack.format == "executorch-xnnpack"
    assert record.precision == "int8" and "NNCF" in record.quantization and "3-D form" in record.quantization
    assert manifest.preferred().file == "model_int8.pte"  # the phone program stays the default
    # Against its own int8 model in PyTorch on all test views, and against the labels.
    assert record.clip_agreement >= 0.95 and record.agreement >= 0.95
    assert record.logit_cosine_min > 0.98
    assert record.top1 >= xnnpack.top1 - 0.1 and record.top1 > 0.5  # 4 classes: chance is 0.25
    assert record.latency_ms > 0 and record.threads == xnnpack.threads
    assert "lowering_int8_openvino" in manifest.stage_seconds
    report = (export / "report.md").read_text()
    assert "ExecuTorch int8 x86 (OpenVINO)" in report and "an x86 figure says nothing about a phone" in report

    # It runs here, through the runtime predict uses, on the kept test clips, ranking them as the
    # XNNPACK program did (two quantizations of one network: close, not equal).
    program, _ = load_verified(export / X86)
    clips = np.load(export / manifest.target_sample.clips_file)
    logits = np.stack([program(torch.from_numpy(clip[None])).numpy()[0] for clip in clips])
    with np.load(export / manifest.target_sample.reference_file) as stored:
        assert "model_int8_openvino" not in stored.files  # the sample is for the programs ARM runs
        phone = stored["model_int8"]
    assert (logits.argmax(1) == phone.argmax(1)).mean() >= 0.75
    assert np.isfinite(logits).all() and np.abs(logits - phone).max() < 2.0

    # The ARM check verified the XNNPACK programs only.
    assert {t.file for t in manifest.targets} == {"model_fp32.pte", "model_int8.pte"}


def test_predict_serves_the_x86_program_with_the_exports_numbers(smoke_run):
    export = smoke_run / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    top1 = next(a["top1"] for a in manifest["artifacts"] if a["file"] == X86)
    # The smoke run's own checkpoint, written by this test session.
    run_config = torch.load(smoke_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "run_config"
    ]
    datamodule = instantiate(OmegaConf.create(run_config).data)
    datamodule.prepare_data()
    datamodule.setup("test")
    result = predict_cli(export / X86, "--data-root", datamodule.dataset_dir, "--split", "test", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.splitlines()[-1])["summary"]
    assert summary["videos"] == len(datamodule.datasets["test"].samples)
    assert summary["top1"] == pytest.approx(top1, abs=1e-6)
    assert result.stderr == ""  # nothing from OpenVINO's loader


def test_the_x86_program_is_int8_and_a_known_target(monkeypatch):
    with pytest.raises(ConfigError, match=r"targets=\[x86_64\] adds the int8 x86 program.*include int8"):
        ExportSettings(targets=("x86_64",), precisions=("fp32",))
    assert ExportSettings(targets=("x86_64", "aarch64")).targets == ("x86_64", "aarch64")
    ExportCallback(targets=["x86_64"])  # installed here: nothing to say
    monkeypatch.setitem(sys.modules, "nncf", None)  # as Python marks a package that cannot be imported
    with pytest.raises(ConfigError, match=r"targets=\[x86_64\] needs nncf: pip install -e '\.\[x86\]'"):
        ExportCallback(targets=["x86_64"])  # when built: before training


def test_the_sweep_summary_keeps_to_the_phone_program(smoke_run, tmp_path):
    """A job whose export holds two int8 programs: the summary's int8 figures are the XNNPACK
    program's (the x86 program's latency is another machine class's figure)."""
    from vidaccel_train.sweep import job_row

    job = tmp_path / "job"
    shutil.copytree(smoke_run / "export", job / "export")
    shutil.copyfile(smoke_run / "metrics.json", job / "metrics.json")
    manifest = Manifest.read(job / "export")
    phone, x86 = manifest.artifact("model_int8.pte"), manifest.artifact(X86)
    assert phone.latency_ms != x86.latency_ms  # else the check below could not tell them apart
    row = job_row(job)
    assert row["status"] == "done" and row["int8_latency_ms"] == phone.latency_ms
    assert row["int8_mb"] == round(phone.bytes / 1e6, 3)
