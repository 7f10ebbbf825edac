"""Scaling out with existing engines: Hydra multirun with a sweep summary, an Optuna search,
Lightning DDP (2 CPU processes over gloo) with sharded data and one set of outputs, and the same
DDP run as a SLURM job on a real one-node cluster (submitit's launcher), requeued and resumed."""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from vidaccel_train.errors import ConfigError
from vidaccel_train.export.manifest import ArtifactRecord, Manifest
from vidaccel_train.models.zoo import ZOO
from vidaccel_train.slurm import settle_launcher
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


# What test_ddp_on_two_cpu_processes... runs, and what the SLURM job of the same run must equal.
DDP_QAT_EXPORT = [
    *DDP_QAT,
    "quant.start_epoch=1",
    "trainer.max_epochs=2",
    "callbacks.export.enabled=true",
    "callbacks.export.latency_repeats=3",
]


@pytest.fixture(scope="module")
def local_ddp_run(tmp_path_factory, data_dir):
    """The QAT run with export under local DDP (2 CPU processes), recording each rank's train
    indices and final state: ``(run dir, indices dir, states dir, result)``."""
    tmp_path = tmp_path_factory.mktemp("local_ddp")
    indices, states = tmp_path / "indices", tmp_path / "states"
    result = run_cli(
        tmp_path / "run",
        data_dir,
        [
            *DDP_QAT_EXPORT,
            "+callbacks.record._target_=support.callbacks.RecordTrainIndices",
            f"+callbacks.record.out_dir={indices}",
            "+callbacks.state._target_=support.callbacks.RecordRankState",
            f"+callbacks.state.out_dir={states}",
        ],
    )
    return tmp_path / "run", indices, states, result


def test_ddp_on_two_cpu_processes_switches_to_qat_shards_data_and_writes_once(local_ddp_run):
    """One fp32 epoch, then QAT: the new network is wrapped by DDP again, so both ranks end with
    the same weights and observer ranges; data sharded; one set of outputs (rank 0)."""
    run_dir, indices, states, result = local_ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SyncBatchNorm needs GPUs" in result.stdout + result.stderr  # trainer=ddp on CPU, nothing added
    for epoch in (0, 1):
        seen = [[int(i) for i in (indices / f"rank{rank}_epoch{epoch}.txt").read_text().split()] for rank in (0, 1)]
        assert len(seen[0]) == len(seen[1]) == 6  # 12 train clips split over 2 ranks
        assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(12))
    first, second = _rank_digests(states)
    assert first == second  # gradients of the QAT graph's parameters were averaged, ranges broadcast
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
    assert not list(run_dir.glob("**/.export.*"))


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


# ---------------------------------------------------------------------------- SLURM
# A real one-node cluster (scripts/slurm_local.sh, Debian's munge, slurmctld and slurmd; the README's
# test command installs them as root), driven through Hydra's submitit launcher.

ROOT = Path(__file__).resolve().parents[1]
needs_slurm = pytest.mark.skipif(
    shutil.which("slurmctld") is None or shutil.which("munged") is None,
    reason="no SLURM here: bash scripts/setup.sh test (as root) installs Debian's munge, slurmctld and slurmd",
)


def _free_port_pair() -> int:
    for port in range(16817, 17817, 2):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two free ports for slurmctld and slurmd")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The cluster's environment for submitting commands (``SLURM_CONF``); stopped at the end."""
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_LOCAL_DIR": str(folder), "SLURM_LOCAL_PORT": str(_free_port_pair())}
    script = ["bash", str(ROOT / "scripts" / "slurm_local.sh")]
    started = subprocess.run([*script, "start"], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"export SLURM_CONF={folder}/slurm.conf" in started.stdout
    status = subprocess.run([*script, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert "slurmctld: running" in status.stdout and " idle " in status.stdout, status.stdout + status.stderr
    yield {"SLURM_CONF": str(folder / "slurm.conf")}
    subprocess.run([*script, "stop"], env=env, capture_output=True, text=True, timeout=120)


def _squeue(slurm) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], env={**os.environ, **slurm}, capture_output=True, text=True)
    return out.stdout.split("\n")[:-1]


SLURM_DDP = ["-m", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=20"]


def _same_run(job_dir: Path, local_dir: Path) -> None:
    """The SLURM job ended where the local DDP run did: test metrics, weights and program bytes."""
    expected, got = (json.loads((d / "metrics.json").read_text())["metrics"] for d in (local_dir, job_dir))
    for key in ("test/top1", "test/loss", "test_fp32/loss", "val/loss", "val_fp32/loss"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    final, reference = (
        torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        for d in (job_dir, local_dir)
    )
    assert all(torch.equal(final[k], reference[k]) for k in reference)
    assert (job_dir / "export" / "model_int8.pte").read_bytes() == (
        local_dir / "export" / "model_int8.pte"
    ).read_bytes()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["hydra.launcher.tasks_per_node=4"], "error: hydra.launcher.tasks_per_node=4 but trainer.devices=2"),
        (
            ["trainer.accelerator=gpu", "hydra.launcher.gpus_per_task=1"],
            "error: hydra.launcher.gpus_per_task=1 with 2 tasks per node: each task would see only its own GPU",
        ),
        (["trainer.accelerator=gpu", "hydra.launcher.gpus_per_node=1"], "error: 1 GPU(s) per node asked of SLURM"),
        (["trainer.devices=1,2"], "error: trainer.devices=1,2: a SLURM sweep submits every job with the same"),
    ],
)
def test_a_slurm_launch_that_cannot_work_is_one_error_line_before_submission(tmp_path, data_dir, overrides, message):
    """No cluster is needed: nothing is submitted (sbatch would fail here without one)."""
    sweep = tmp_path / "sweep"
    result = run_cli(
        tmp_path / "unused",
        data_dir,
        [*SLURM_DDP, f"hydra.sweep.dir={sweep}", "trainer=ddp", "trainer.devices=2", *overrides],
        env={"SLURM_CONF": str(tmp_path / "no-cluster.conf")},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr[-2000:]
    assert not sweep.exists() and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "launcher, trainer, expected",
    [
        ({"tasks_per_node": 1, "nodes": 1}, {"devices": 2, "accelerator": "cpu"}, {"tasks_per_node": 2}),
        ({"tasks_per_node": 1, "nodes": 1}, {"devices": 8, "num_nodes": 2, "accelerator": "gpu"},
         {"tasks_per_node": 8, "nodes": 2, "gpus_per_node": 8}),
        ({"tasks_per_node": 1, "nodes": 1, "gres": "gpu:a100:8"}, {"devices": 8, "accelerator": "auto"},
         {"tasks_per_node": 8}),
        ({"tasks_per_node": 1, "nodes": 1, "gpus_per_task": 1}, {"devices": 1, "accelerator": "gpu"}, {}),
        # trainer=cpu has no num_nodes: one node, the launcher's as it is
        ({"tasks_per_node": 1, "nodes": 1}, {"devices": 1, "num_nodes": None, "accelerator": "cpu"}, {}),
    ],
)  # fmt: skip
def test_the_launcher_follows_the_trainer_where_left_out(launcher, trainer, expected):
    assert settle_launcher(launcher, trainer, given=set()) == expected


def test_the_launcher_refuses_what_lightning_cannot_run():
    with pytest.raises(ConfigError, match="trainer.devices='auto': on SLURM give the devices per node as a count"):
        settle_launcher({"tasks_per_node": 1}, {"devices": "auto"}, given=set())
    with pytest.raises(ConfigError, match="hydra.launcher.nodes=1 but trainer.num_nodes=2"):
        settle_launcher({"tasks_per_node": 1, "nodes": 1}, {"devices": 1, "num_nodes": 2}, given={"nodes"})
    with pytest.raises(ConfigError, match="for trainer.accelerator=cpu: they would sit idle"):
        settle_launcher({"tasks_per_node": 1, "gpus_per_node": 2}, {"devices": 1, "accelerator": "cpu"}, given=set())


@needs_slurm
def test_ddp_through_slurm_is_the_local_ddp_run_and_a_sweep_summarises(tmp_path, data_dir, slurm, local_ddp_run):
    """`-m hydra/launcher=submitit_slurm trainer=ddp trainer.accelerator=cpu trainer.devices=2` on
    a real cluster: two tasks per job without being told, QAT switched under DDP, the export once,
    job 0 equal to the same run under local DDP (metrics, weights, program bytes), the sweep's
    summary and plot, and each epoch's line in the job's log."""
    sweep = tmp_path / "sweep"
    result = run_cli(
        tmp_path / "unused", data_dir, [*SLURM_DDP, f"hydra.sweep.dir={sweep}", *DDP_QAT_EXPORT, "seed=42,7"], env=slurm
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SLURM launcher: tasks_per_node=2" in result.stdout + result.stderr
    submission = next(sweep.glob(".submitit/*/*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in submission and "#SBATCH --nodes=1" in submission
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [(row["job"], row["status"]) for row in rows] == [("0", "done"), ("1", "done")]
    assert (sweep / "sweep_pareto.png").stat().st_size > 0
    run_dir = local_ddp_run[0]
    assert local_ddp_run[3].returncode == 0
    _same_run(sweep / "0", run_dir)
    for job in ("0", "1"):
        assert sorted(p.name for p in (sweep / job / "export").iterdir()) == sorted(
            p.name for p in (run_dir / "export").iterdir()
        )
        log = (sweep / job / "train.log").read_text()
        lines = [line for line in log.splitlines() if "] - epoch " in line]
        assert len(lines) == 2, log  # one per epoch: rank 1 writes only its warnings here
        assert "epoch 1/2: train loss " in lines[0] and ", val top-1 " in lines[0] and " left" in lines[0]
        assert "epoch 2/2: train loss " in lines[1]
    deadline = time.monotonic() + 60  # submitit has the results before SLURM has ended the tasks
    while _squeue(slurm) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _squeue(slurm)


@needs_slurm
@pytest.mark.slow
@pytest.mark.parametrize("cut", ["scontrol requeue", "time limit"])
def test_a_job_stopped_mid_qat_is_requeued_and_resumes_to_the_unstopped_run(
    tmp_path, data_dir, slurm, local_ddp_run, cut
):
    """Mid-QAT (epoch 1 of 0-1, after its second step) the job is requeued by ``scontrol requeue``
    (SLURM's SIGTERM to every task) or reaches its time limit (SLURM's USR2 from submitit's
    ``--signal``): the checkpoint is written, the job goes back to the queue, starts again,
    resumes mid-epoch and ends as the unstopped local run did."""
    sweep, marker = tmp_path / "sweep", tmp_path / "paused"
    limit = ["hydra.launcher.timeout_min=4", "hydra.launcher.signal_delay_s=150"] if cut == "time limit" else []
    command = [
        sys.executable, "-m", "vidaccel_train", *SLURM_DDP, f"hydra.sweep.dir={sweep}", f"paths.data_dir={data_dir}",
        *DDP_QAT_EXPORT, *limit, "+callbacks.pause._target_=support.callbacks.PauseAt",
        f"+callbacks.pause.marker={marker}", "+callbacks.pause.epoch=1", "+callbacks.pause.batch=1",
        "+callbacks.pause.seconds=280",
    ]  # fmt: skip
    env = {**os.environ, **slurm, "PYTHONPATH": str(ROOT / "tests")}
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        deadline = time.monotonic() + 240
        while not marker.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.5)
        assert marker.exists(), p.communicate()[0][-3000:] if p.poll() is not None else "no pause"
        if cut == "scontrol requeue":
            (job,) = [line.split()[0] for line in _squeue(slurm)]
            subprocess.run(["scontrol", "requeue", job], env=env, check=True)
        output = p.communicate(timeout=560)[0]
    assert p.returncode == 0, output[-3000:]
    job_log = "\n".join(path.read_text() for path in [sweep / "0" / "train.log", *sweep.glob(".submitit/*/*_0_log.*")])
    if cut == "time limit":
        assert "SIGUSR2 from SLURM (the time limit is near): stopping at the next training step" in job_log
        assert "Requeued job" in job_log
    else:
        assert "DUE TO JOB REQUEUE" in job_log
    log = (sweep / "0" / "train.log").read_text()
    assert "SLURM started this job again (restart 1)" in log and "resuming epoch 1 after its first 2 batches" in log
    _same_run(sweep / "0", local_ddp_run[0])


def test_the_multinode_example_composes_to_the_sbatch_script_the_docs_describe(tmp_path, data_dir):
    """conf/experiment/slurm_multinode.yaml as the launcher would submit it (2 nodes x 8 GPUs):
    its settings settled, and the sbatch script submitit writes from them, without a cluster."""
    from hydra import compose, initialize_config_dir
    from submitit.slurm.slurm import _make_sbatch_string

    from vidaccel_train.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train", overrides=["experiment=slurm_multinode", "data.root=/shared/k400"], return_hydra_config=True
        )
    keys = ("nodes", "tasks_per_node", "gpus_per_node", "gpus_per_task", "gres", "cpus_per_task", "mem_gb")
    launcher = {key: cfg.hydra.launcher[key] for key in (*keys, "timeout_min", "signal_delay_s")}
    trainer = {key: cfg.trainer[key] for key in ("devices", "num_nodes", "accelerator")}
    settled = {**launcher, **settle_launcher(launcher, trainer, given=set())}
    assert (settled["nodes"], settled["tasks_per_node"], settled["gpus_per_node"]) == (2, 8, 8)
    script = _make_sbatch_string(
        command="python -m submitit.core._submit",
        folder=str(tmp_path),
        job_name="train",
        nodes=settled["nodes"],
        ntasks_per_node=settled["tasks_per_node"],
        gpus_per_node=settled["gpus_per_node"],
        cpus_per_task=settled["cpus_per_task"],
        mem=f"{settled['mem_gb']}GB",
        time=settled["timeout_min"],
        signal_delay_s=settled["signal_delay_s"],
    )
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=10", "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in script
    assert cfg.trainer.strategy == "ddp" and cfg.data.num_classes == 400
