"""Scaling out with existing engines: Hydra multirun with a sweep summary, an Optuna search,
Lightning DDP (2 CPU processes over gloo) with sharded data and one set of outputs."""

import csv
import json

import pytest
import torch
import yaml

from vidaccel_train.export.manifest import ArtifactRecord, Manifest
from vidaccel_train.models.zoo import ZOO
from vidaccel_train.sweep import pareto_front, write_summary

from support import TINY_FIT, run_cli


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(10.0, 70.0), (5.0, 60.0), (12.0, 65.0), (5.0, 55.0), (20.0, 71.0)]  # (latency, top-1)
    assert pareto_front(points) == [0, 1, 4]


def test_the_same_architecture_timed_twice_is_not_a_trade_off():
    """Two jobs of one architecture whose latency ranges overlap: the more accurate one dominates;
    ranges apart, the faster and the more accurate job are both on the front."""
    points = [(0.26, 70.0), (0.49, 72.0)]
    assert pareto_front(points) == [0, 1]  # the figures alone look like a trade-off
    assert pareto_front(points, [(0.26, 0.52), (0.49, 0.55)]) == [1]
    assert pareto_front(points, [(0.26, 0.30), (0.49, 0.55)]) == [0, 1]
    assert pareto_front([(0.3, 70.0), (0.3, 70.0)], [(0.3, 0.4), (0.3, 0.4)]) == [0, 1]


def test_a_summary_keeps_each_latency_range_as_the_export_recorded_it(tmp_path):
    """A range of one value (one timing round) plots as a zero-length bar; a range rounded again
    in the summary put its top below the figure and the plot refused the negative bar."""
    for job, figure in (("0", 21.7804), ("1", 123.4567)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / "export").mkdir()
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- optim.lr=0.00{job}\n")
        (tmp_path / job / "metrics.json").write_text(json.dumps({"metrics": {"test/top1": 0.9, "test_fp32/top1": 0.9}}))
        record = ArtifactRecord(
            file="model_int8.pte",
            precision="int8",
            bytes=10,
            top1=0.9,
            latency_ms=figure,
            latency_range_ms=[figure] * 2,
        )
        Manifest("x3d_tiny", ["a", "b"], ZOO["x3d_tiny"].clip, [record]).write(tmp_path / job / "export")
    rows = write_summary(tmp_path)
    assert [row["int8_latency_range_ms"] for row in rows] == ["21.7804-21.7804", "123.4567-123.4567"]
    assert (tmp_path / "sweep_pareto.png").stat().st_size > 0


@pytest.mark.slow
def test_a_multirun_writes_one_folder_per_job_and_a_summary(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    result = run_cli(
        tmp_path / "unused",
        data_dir,
        [
            "-m",
            f"hydra.sweep.dir={sweep}",
            *TINY_FIT,
            "callbacks.export.enabled=true",
            "callbacks.export.latency_repeats=3",
            "trainer.max_epochs=1",
            "optim.lr=0.01,0.05",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    assert [row["job"] for row in rows] == ["0", "1"]
    assert [row["overrides"].split()[-1] for row in rows] == ["optim.lr=0.01", "optim.lr=0.05"]
    for row in rows:
        assert row["status"] == "done"
        assert 0 <= float(row["fp32_top1"]) <= 1 and 0 <= float(row["int8_top1"]) <= 1
        assert float(row["int8_latency_ms"]) > 0 and float(row["int8_mb"]) > 0
    assert "| job | overrides |" in (sweep / "sweep_summary.md").read_text()
    assert (sweep / "sweep_pareto.png").stat().st_size > 0
    for job in ("0", "1"):
        assert (sweep / job / "export" / "manifest.json").is_file()


@pytest.mark.slow
def test_an_optuna_search_runs_trials_and_names_the_best(tmp_path, data_dir):
    space = "[{name:optim.lr,type:float,low:0.001,high:0.05,log:true},{name:quant.lr_scale,type:categorical,choices:[0.1,1.0]}]"
    result = run_cli(
        tmp_path,
        data_dir,
        [
            "hparams_search=qat_lr",
            f"hparams_search.params={space}",
            "hparams_search.n_trials=2",
            *TINY_FIT,
            "quant=qat",
            "trainer.max_epochs=2",
            "quant.start_epoch=1",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["metric"] == "test/top1" and set(best["params"]) == {"optim.lr", "quant.lr_scale"}
    rows = list(csv.DictReader(open(tmp_path / "sweep_summary.csv")))
    assert len(rows) == 2 and all(row["status"] == "done" and row["int8_top1"] != "" for row in rows)
    assert best["value"] == max(float(row["int8_top1"]) for row in rows)
    assert (tmp_path / "study.db").is_file()


DDP_QAT = [
    *TINY_FIT,
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "data.batch_size=2",
    "quant=qat",
    "optim=adamw",
]


def _rank_digests(folder):
    return [(folder / f"rank{rank}.txt").read_text() for rank in (0, 1)]


def test_ddp_on_two_cpu_processes_switches_to_qat_shards_data_and_writes_once(tmp_path, data_dir):
    """One fp32 epoch, then QAT: the new network is wrapped by DDP again, so both ranks end with
    the same weights and observer ranges; data sharded; one set of outputs (rank 0)."""
    indices, states = tmp_path / "indices", tmp_path / "states"
    result = run_cli(
        tmp_path / "run",
        data_dir,
        [
            *DDP_QAT,
            "quant.start_epoch=1",
            "trainer.max_epochs=2",
            "callbacks.export.enabled=true",
            "callbacks.export.latency_repeats=3",
            "+callbacks.record._target_=support.callbacks.RecordTrainIndices",
            f"+callbacks.record.out_dir={indices}",
            "+callbacks.state._target_=support.callbacks.RecordRankState",
            f"+callbacks.state.out_dir={states}",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SyncBatchNorm needs GPUs" in result.stdout + result.stderr  # trainer=ddp on CPU, nothing added
    for epoch in (0, 1):
        seen = [[int(i) for i in (indices / f"rank{rank}_epoch{epoch}.txt").read_text().split()] for rank in (0, 1)]
        assert len(seen[0]) == len(seen[1]) == 6  # 12 train clips split over 2 ranks
        assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(12))
    first, second = _rank_digests(states)
    assert first == second  # gradients of the QAT graph's parameters were averaged, ranges broadcast
    run_dir = tmp_path / "run"
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    # The best and last checkpoints, and the float model saved when QAT began (written once).
    assert (
        len(checkpoints) == 3 and checkpoints[0].startswith("epoch_") and checkpoints[1:] == ["fp32.ckpt", "last.ckpt"]
    )
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == [
        "accuracy_latency.png",
        "manifest.json",
        "model_int8.pte",
        "report.md",
        "target_clips.npy",
        "target_reference.npz",
    ]
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert {"test/top1", "test_fp32/top1", "val_fp32/top1"} <= set(metrics)
    assert not list(tmp_path.glob("**/.export.*"))


@pytest.mark.slow
@pytest.mark.parametrize("start_epoch", [0, 1])
def test_ddp_qat_resumes_mid_qat_to_the_unstopped_run(tmp_path, data_dir, start_weights, start_epoch):
    run = [
        *DDP_QAT,
        f"quant.start_epoch={start_epoch}",
        "quant.freeze_observer_epoch=2",
        "trainer.max_epochs=3",
        "data.num_workers=2",
        f"model.checkpoint={start_weights}",
    ]
    unstopped, stopped = tmp_path / "unstopped", tmp_path / "stopped"
    assert run_cli(unstopped, data_dir, run).returncode == 0
    cut = run_cli(
        stopped,
        data_dir,
        [*run, "+callbacks.stop._target_=support.callbacks.StopAfterEpoch", "+callbacks.stop.epoch=1", "test=false"],
    )
    assert cut.returncode == 0, cut.stderr[-3000:]
    resumed = run_cli(stopped, data_dir, [*run, "ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = (json.loads((d / "metrics.json").read_text())["metrics"] for d in (unstopped, stopped))
    for key in ("test/top1", "test/loss", "test_fp32/loss", "val/loss"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    final, reference = (
        torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        for d in (stopped, unstopped)
    )
    assert all(torch.equal(final[k], reference[k]) for k in reference)
