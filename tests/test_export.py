"""Export after training: verified fp32 and int8 ExecuTorch artifacts, predict, tamper checks."""

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torchvision import tv_tensors

from vidaccel_train.data.clips import Views
from vidaccel_train.data.transforms import build_transform
from vidaccel_train.data.video_io import read_clip
from vidaccel_train.errors import ArtifactError
from vidaccel_train.export import ExecuTorchModel
from vidaccel_train.export.__main__ import export_checkpoint
from vidaccel_train.export.artifacts import export_artifacts
from vidaccel_train.export.callback import export_input
from vidaccel_train.export.inputs import ExportSettings
from vidaccel_train.export.manifest import Manifest, sha256_of
from vidaccel_train.export.runtime import load_verified
from vidaccel_train.export.verify import fidelity, measure_latency
from vidaccel_train.models import create_model
from vidaccel_train.predict import predict
from vidaccel_train.train import run
from vidaccel_train.training import VideoClassifier
from vidaccel_train.training.module import net_builder

from support import TINY_FIT, compose_config, run_cli
from support.outputs import full_disk, readonly_folder


@pytest.fixture(scope="module")
def export_dir(smoke_run):
    return smoke_run / "export"


def test_run_leaves_both_programs_manifest_and_report(export_dir):
    names = {p.name for p in export_dir.iterdir()}
    assert {"model_fp32.pte", "model_int8.pte", "manifest.json", "report.md", "accuracy_latency.png"} <= names
    assert not [n for n in names if ".tmp-" in n]
    assert not list(export_dir.parent.glob(".export*.tmp-*"))  # no staging or retired folder beside it
    assert "![accuracy against latency](accuracy_latency.png)" in (export_dir / "report.md").read_text()


def test_manifest_describes_verified_artifacts(export_dir, smoke_run):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert manifest["classes"] == ["move_left", "move_right", "move_up", "move_down"]
    assert manifest["input_shape"] == [1, 3, 4, 56, 56] and manifest["int8_source"] == "qat model"
    test_metrics = json.loads((smoke_run / "metrics.json").read_text())["metrics"]
    for artifact in manifest["artifacts"]:
        path = export_dir / artifact["file"]
        assert artifact["sha256"] == sha256_of(path) and artifact["bytes"] == path.stat().st_size
        assert artifact["latency_ms"] > 0 and artifact["threads"] >= 1
        low, high = artifact["latency_range_ms"]
        assert low == artifact["latency_ms"] <= high and artifact["latency_timing"].startswith(
            "lowest median of 3 rounds"
        )
    # Checked against the in-framework model on every test view (64 videos x 3 views): the fp32
    # program computes the same numbers; XNNPACK's int8 arithmetic rounds differently from
    # PyTorch's reference int8 kernels and may flip a near-tie.
    assert manifest["verified_on"] == {"videos": 64, "clips": 192}
    # The phone programs (the smoke run also writes the x86 program: tests/test_x86_program.py).
    by_precision = {a["precision"]: a for a in manifest["artifacts"] if a["format"] == "executorch-xnnpack"}
    fp32, int8 = by_precision["fp32"], by_precision["int8"]
    assert fp32["logit_max_abs_error"] < 1e-3 and fp32["logit_cosine_min"] > 0.99999 and fp32["clip_agreement"] >= 0.997
    assert int8["logit_cosine_min"] > 0.99 and int8["clip_agreement"] >= 0.98 and int8["agreement"] >= 0.97
    assert int8["disagreeing_clips"] == round((1 - int8["clip_agreement"]) * 192)
    assert int8["top1"] == pytest.approx(test_metrics["test/top1"], abs=0.02)
    assert int8["bytes"] < fp32["bytes"] * 0.6
    assert set(manifest["stage_seconds"]) == {
        "int8_conversion",
        "lowering_fp32",
        "lowering_int8",
        "lowering_int8_openvino",
        "verification",
        "latency",
        "target_aarch64",
    }
    report = (export_dir / "report.md").read_text()
    assert "clip agreement" in report and "Export stages: int8 conversion" in report
    assert "| range over rounds (ms) |" in report and "int8: lowest median of 3 rounds x" in report


def test_latency_is_the_lowest_round_median_and_a_burst_of_other_work_does_not_raise_it():
    """A callable slowed for a stretch of its calls (as by another process on the same cores)
    keeps its figure; the range over rounds shows the burst. A fast callable gets more calls."""
    calls = itertools.count()

    def disturbed():  # 1 ms, 3 ms for calls 20-70 (rounds 1 to 3 of about 20 calls each)
        time.sleep(0.003 if 20 <= next(calls) < 70 else 0.001)

    def fast():
        sum(range(100))

    timed = measure_latency({"disturbed": disturbed, "fast": fast}, repeats=5, rounds=5, min_round_s=0.02)
    assert timed["disturbed"].rounds == 5 and timed["disturbed"].runs >= 5
    assert 1.0 <= timed["disturbed"].ms < 2.0 and timed["disturbed"].high_ms >= 3.0
    assert timed["disturbed"].spread > 0.5
    assert timed["fast"].runs > 100 and timed["fast"].ms < 0.2  # 0.02 s of calls a round, not 5 calls
    with pytest.raises(ValueError, match="at least 1"):
        measure_latency({"fast": fast}, repeats=0)


def test_fidelity_counts_clips_and_videos_and_measures_the_logit_error():
    # 2 videos x 3 views x 3 classes; the artifact flips one view of video 1 from class 0 to 1.
    reference = torch.tensor([[[3.0, 1, 0], [3, 1, 0], [3, 1, 0]], [[2.0, 1.5, 0], [2, 1.5, 0], [2, 1.5, 0]]])
    artifact = reference.clone()
    artifact[1, 0] = torch.tensor([1.7, 1.9, 0.0])
    measured = fidelity(artifact, reference)
    assert measured["clip_agreement"] == pytest.approx(5 / 6) and measured["disagreeing_clips"] == 1
    assert measured["agreement"] == 1.0  # the averaged views of video 1 still favour class 0
    assert measured["logit_max_abs_error"] == pytest.approx(0.4)
    assert measured["widest_disagreeing_gap"] == pytest.approx(0.5)
    expected_cosine = torch.nn.functional.cosine_similarity(artifact[1, 0], reference[1, 0], dim=0)
    assert measured["logit_cosine_min"] == pytest.approx(expected_cosine.item())
    artifact[1, 1] = artifact[1, 2] = torch.tensor([0.0, 2.5, 0.0])
    assert fidelity(artifact, reference)["agreement"] == 0.5


def test_both_programs_run_in_the_executorch_runtime(export_dir):
    clip = torch.randn(1, 3, 4, 56, 56)
    outputs = [ExecuTorchModel(export_dir / name)(clip) for name in ("model_fp32.pte", "model_int8.pte")]
    assert all(out.shape == (1, 4) and torch.isfinite(out).all() for out in outputs)


def test_predict_matches_the_in_framework_int8_model(export_dir, smoke_run, data_dir):
    video = next(data_dir.glob("synthetic/synthetic-*/test/move_right/*.mp4"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidaccel_train.predict",
            str(export_dir / "model_int8.pte"),
            str(video),
            "--topk",
            "2",
            "--json",
            "--views",
            "1x1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    predictions = json.loads(result.stdout)["predictions"]
    assert len(predictions) == 2 and predictions[0]["score"] >= predictions[1]["score"]
    # The export folder names its int8 program: the same answer, from the library.
    from_folder = predict(export_dir, video, topk=2, views=Views(1, 1))
    assert [(p["label"], pytest.approx(p["score"], abs=1e-6)) for p in predictions] == from_folder

    module = VideoClassifier.load_from_checkpoint(
        smoke_run / "checkpoints" / "last.ckpt", net=create_model("x3d_tiny", num_classes=4), optimizer=torch.optim.SGD
    )
    module.eval()
    manifest = Manifest.read(export_dir)
    spec = manifest.clip
    frames, _ = read_clip(video, lambda info: spec.timestamps(spec.centre_start(info)))
    batch = build_transform(False, 56, spec.eval_short_side)(tv_tensors.Video(frames)).unsqueeze(0)
    with torch.no_grad():
        expected = manifest.classes[int(module.int8_net()(batch).argmax())]
    assert predictions[0]["label"] == expected


def test_the_manifest_records_the_runs_clip_contract_in_its_own_names(export_dir, smoke_run):
    """The zoo entry's contract, as the run changed it, is the manifest's (one vocabulary from the
    zoo to the export), and the typed record reads back what the export wrote."""
    from vidaccel_train.data.contract import ClipContract

    written = json.loads((export_dir / "manifest.json").read_text())
    run_config = torch.load(smoke_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "run_config"
    ]
    assert written["manifest_version"] == 3 and "short_side" not in written
    manifest = Manifest.read(export_dir)
    assert manifest.clip == ClipContract.from_dict(run_config["model"]["clip"]) == ClipContract.from_dict(written)
    assert (manifest.clip.crop_size, manifest.clip.eval_short_side, manifest.display_aspect) == (56, 60, "square")
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_a_manifest_of_an_older_export_reads_with_its_defaults(export_dir, tmp_path):
    """Version 1 (short_side; before display_aspect, test_views and the timing ranges): read in one
    place with the defaults of its time, and its program still runs through predict."""
    older = tmp_path / "export"
    shutil.copytree(export_dir, older)
    values = json.loads((older / "manifest.json").read_text())
    values["short_side"] = values.pop("eval_short_side")
    for key in ("manifest_version", "train_short_side", "display_aspect", "test_views", "stage_seconds"):
        values.pop(key)
    for record in values["artifacts"]:
        for key in ("latency_range_ms", "latency_timing", "disagreeing_clips", "widest_disagreeing_gap"):
            record.pop(key)
    (older / "manifest.json").write_text(json.dumps(values))
    manifest = Manifest.read(older)
    assert manifest.clip.eval_short_side == 60 and manifest.clip.train_short_side is None
    assert (manifest.display_aspect, manifest.test_views) == ("stored", Views(1, 1))
    assert manifest.preferred().file == "model_int8.pte" and manifest.preferred().latency_range_ms is None
    (older / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="is not a manifest the export wrote"):
        Manifest.read(older)


def test_a_tampered_artifact_is_refused(export_dir, tmp_path, data_dir):
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    data = bytearray((copy / "model_int8.pte").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model_int8.pte").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_verified(copy / "model_int8.pte")
    video = next(data_dir.glob("synthetic/synthetic-*/test/move_up/*.mp4"))
    result = subprocess.run(
        [sys.executable, "-m", "vidaccel_train.predict", str(copy / "model_int8.pte"), str(video)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "sha256" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory, data_dir):
    """A tiny fp32 run, tested (its own metrics.json and confusion matrices), not exported."""
    run_dir = tmp_path_factory.mktemp("fp32")
    run(compose_config(run_dir, data_dir, [*TINY_FIT, "trainer.max_epochs=1"]))
    return run_dir


# A quick export: one timing round of two calls on one thread, two calibration batches.
QUICK_EXPORT = [
    "callbacks.export.latency_repeats=2",
    "callbacks.export.latency_rounds=1",
    "callbacks.export.threads=1",
    "callbacks.export.calibration_batches=2",
]


def export_cli(args, cwd, timeout=600, preexec_fn=None) -> subprocess.CompletedProcess:
    """`python -m vidaccel_train.export <args>` in its own process, started in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "vidaccel_train.export", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip


def _files(folder, outside=None):
    """Every path under ``folder`` but those under ``folder/outside``: a file's mtime and digest."""
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, sha256_of(path)) if path.is_file() else "folder"
        for path in sorted(folder.rglob("*"))
        if outside is None or path.relative_to(folder).parts[0] != outside
    }


def _error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_the_export_cli_on_another_data_root_writes_only_its_out_dir(fp32_run, tmp_path):
    """The default out_dir (<run>/export) and another dataset: the test's confusion matrices
    and everything else the command writes go into the export folder; the run's own files
    (its metrics.json and test confusion matrices among them) stay byte for byte as they were."""
    run_dir, cwd = tmp_path / "run", tmp_path / "cwd"
    shutil.copytree(fp32_run, run_dir)  # copy2: the run's files keep their times
    cwd.mkdir()
    assert (run_dir / "confusion_matrix_test.csv").is_file() and (run_dir / "metrics.json").is_file()
    before = _files(run_dir)
    result = export_cli(
        [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"data.root={tmp_path / 'other'}",
         "data.synthetic.seed=1", *QUICK_EXPORT],
        cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert _files(run_dir, outside="export") == before  # nothing new, changed or touched beside it
    written = sorted(p.name for p in (run_dir / "export").iterdir())
    assert {"model_int8.pte", "manifest.json", "report.md", "confusion_matrix_test.csv"} <= set(written), written
    other_classes = (run_dir / "export" / "confusion_matrix_test.csv").read_text().splitlines()
    assert len(other_classes) == 5  # a header and the four classes of the other dataset's test
    assert list(cwd.iterdir()) == []
    assert any((tmp_path / "other").iterdir())  # the other dataset was generated there, and used


def test_the_export_cli_refuses_an_out_dir_it_cannot_write_before_any_work(fp32_run, tmp_path):
    ckpt = fp32_run / "checkpoints" / "last.ckpt"
    never = tmp_path / "data_never_made"  # the dataset it would generate first, were the check late
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    with readonly_folder(tmp_path / "readonly") as readonly:
        for out_dir in (readonly, readonly / "export", a_file / "export"):
            result = export_cli([f"ckpt_path={ckpt}", f"out_dir={out_dir}", f"data.root={never}"], tmp_path)
            assert result.returncode == 2, result.stderr[-3000:]
            assert len(_error_lines(result)) == 1, result.stderr[-3000:]
            assert "export folder" in result.stderr and str(out_dir) in result.stderr
            assert "Traceback" not in result.stderr
            assert not never.exists()
    assert a_file.read_text() == "not a folder\n"


def test_an_export_that_fills_its_disk_ends_in_one_error_line_and_leaves_nothing(fp32_run, tmp_path):
    with full_disk(tmp_path / "small") as limit:
        out_dir = tmp_path / "small" / "export"
        result = export_cli(
            [f"ckpt_path={fp32_run / 'checkpoints' / 'last.ckpt'}", f"out_dir={out_dir}", *QUICK_EXPORT],
            tmp_path,
            preexec_fn=limit,
        )
        assert result.returncode == 2, result.stderr[-3000:]
        errors = _error_lines(result)
        assert len(errors) == 1 and str(out_dir) in errors[0], result.stderr[-3000:]
        assert "No space left on device" in errors[0] or "too large" in errors[0]
        assert "Traceback" not in result.stderr
        assert list((tmp_path / "small").iterdir()) == []  # no export, no staging folder
        if limit is None:  # the small disk is a mount: its own folder cannot be replaced by an export
            mount = export_cli(
                [f"ckpt_path={fp32_run / 'checkpoints' / 'last.ckpt'}", f"out_dir={tmp_path / 'small'}"], tmp_path
            )
            assert mount.returncode == 2 and len(_error_lines(mount)) == 1, mount.stderr[-3000:]
            assert "mount point" in mount.stderr and str(tmp_path / "small" / "export") in mount.stderr


def test_the_training_export_checks_its_out_dir_before_training(tmp_path, data_dir):
    with readonly_folder(tmp_path / "readonly") as readonly:
        result = run_cli(
            tmp_path / "run",
            data_dir,
            [
                *TINY_FIT,
                "trainer.max_epochs=1",
                "callbacks.export.enabled=true",
                f"callbacks.export.out_dir={readonly}",
            ],
        )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = _error_lines(result)
    assert len(errors) == 1 and "export folder" in errors[0] and str(readonly) in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "run").rglob("*.ckpt")) and not (tmp_path / "run" / "metrics.json").exists()


def test_the_export_command_line_writes_only_its_out_dir(fp32_run, tmp_path):
    out, cwd = tmp_path / "exported", tmp_path / "cwd"
    cwd.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "vidaccel_train.export", f"ckpt_path={fp32_run / 'checkpoints' / 'last.ckpt'}",
         f"out_dir={out}", "callbacks.export.latency_repeats=2", "callbacks.export.threads=1"],
        cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [line for line in result.stdout.splitlines() if line.startswith("model_")]
    assert [line.split(":")[0] for line in printed] == ["model_int8.pte"]  # the run's callbacks.export.precisions
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["int8_source"].startswith("post-training calibration")  # an fp32 run: calibrated here
    assert {a["threads"] for a in manifest["artifacts"]} == {1}  # the run config changed from the command line
    assert list(cwd.iterdir()) == []  # no Hydra run folder or log file where it was started
    typo = subprocess.run(
        [sys.executable, "-m", "vidaccel_train.export", f"ckpt_path={fp32_run / 'checkpoints' / 'last.ckpt'}",
         "callbacks.export.thread=2"],
        cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    assert typo.returncode != 0 and "callbacks.export.thread" in typo.stderr  # Hydra checks the keys


def _test_video(run_dir, class_name):
    """A test-split video of the dataset a run trained on (its root is in the checkpoint's config)."""
    config = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["run_config"]
    return next(Path(config["data"]["root"]).glob(f"synthetic-*/test/{class_name}/*.mp4"))


@pytest.mark.slow  # test_the_export_command_line_writes_only_its_out_dir runs the same export through the CLI
def test_export_cli_from_an_fp32_checkpoint_calibrates_int8(fp32_run, tmp_path):
    out = tmp_path / "exported"
    torch_threads = torch.get_num_threads()
    latency_threads = torch_threads + 1
    manifest = export_checkpoint(
        fp32_run / "checkpoints" / "last.ckpt",
        [f"out_dir={out}", "callbacks.export.latency_repeats=3", f"callbacks.export.threads={latency_threads}"],
    )
    # Timed on the threads asked for; PyTorch gets its own count back (a multirun's next job trains on it).
    assert {a.threads for a in manifest.artifacts} == {latency_threads}
    assert torch.get_num_threads() == torch_threads
    assert manifest.int8_source.startswith("post-training calibration")
    # The default callbacks.export.precisions: the int8 program alone, nothing lowered for fp32.
    assert {a.precision for a in manifest.artifacts} == {"int8"}
    assert sorted(p.name for p in out.glob("*.pte")) == ["model_int8.pte"]
    assert "lowering_fp32" not in manifest.stage_seconds
    assert manifest.stage_seconds["int8_conversion"] > 0  # calibration is timed with the conversion
    assert manifest.reference_eager_fp32.top1 >= 0  # the fp32 model is still measured, in PyTorch
    assert Manifest.read(out) == manifest  # what was written is what was returned
    label, score = predict(out / "model_int8.pte", _test_video(fp32_run, "move_left"), topk=1)[0]
    assert label in manifest.classes and 0 <= score <= 1


@pytest.mark.slow
def test_a_failed_export_leaves_nothing_half_written(fp32_run, tmp_path, data_dir):
    cfg = compose_config(fp32_run, data_dir, TINY_FIT)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    datamodule.datasets["test"].samples = []  # a test split with nothing left in it
    checkpoint = torch.load(fp32_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    module = VideoClassifier.load_from_checkpoint(
        fp32_run / "checkpoints" / "last.ckpt", net=net_builder(checkpoint["run_config"])(), optimizer=torch.optim.SGD
    )
    module.run_config = checkpoint["run_config"]
    out = tmp_path / "export"
    with pytest.raises(RuntimeError, match="test split is empty"):
        export_artifacts(
            export_input(module, datamodule), out, ExportSettings(threads=1, latency_repeats=1, calibration_batches=1)
        )
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder either


def test_the_export_checks_programs_against_the_logits_the_test_computed(smoke_run, data_dir):
    """The references' logits recorded during the test are those the models give on the export's
    own pass over the test split (same views, same order), so the export need not run them again."""
    import lightning as L

    from vidaccel_train.export.callback import tested_logits
    from vidaccel_train.export.verify import collect_logits

    checkpoint = smoke_run / "checkpoints" / "last.ckpt"
    config = torch.load(checkpoint, map_location="cpu", weights_only=False)["run_config"]
    cfg = compose_config(smoke_run, data_dir, ["experiment=smoke"])
    datamodule = instantiate(cfg.data)
    module = VideoClassifier.load_from_checkpoint(checkpoint, net=net_builder(config)(), optimizer=torch.optim.SGD)
    L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=smoke_run / "retest",
    ).test(module, datamodule=datamodule)
    recorded = tested_logits(module, datamodule, ("fp32", "int8"))
    assert set(recorded) == {"reference_fp32", "reference_int8"}
    with torch.no_grad():
        module.run_config = config
        fresh, labels = collect_logits(
            datamodule.test_dataloader(),
            {"reference_fp32": module.float_deploy_form(4), "reference_int8": module.int8_net()},
        )
    assert recorded["reference_int8"].shape == (64, 3, 4) and len(labels) == 64
    assert torch.allclose(recorded["reference_fp32"], fresh["reference_fp32"], atol=1e-4)
    # int8: the test ran several videos per batch, this pass one video at a time (and earlier
    # tests may have left another thread count), so float sums run in another order and now and
    # then a value crosses a rounding boundary: most clips come out bit-equal, the rest move by a
    # small part of the logits' spread (measured: 7% of clips, 0.4% of it), never by a clip's worth.
    int8_recorded, int8_fresh = recorded["reference_int8"], fresh["reference_int8"]
    difference = (int8_recorded - int8_fresh).abs()
    spread = (int8_fresh.amax(-1) - int8_fresh.amin(-1)).mean()
    assert (difference.amax(-1) == 0).float().mean() >= 0.8
    assert difference.max() < 0.02 * spread
    assert (int8_recorded.argmax(-1) == int8_fresh.argmax(-1)).float().mean() >= 0.98
