"""A run folder belongs to one run: a new run never resumes, tests or overwrites another run's
files; resuming happens only when asked, with the checkpoint's model, classes and clip contract,
and the settings that may change (learning rate, epochs) applied and said."""

from __future__ import annotations

import csv
import datetime
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import TINY_FIT, run_cli

RUN = [*TINY_FIT, "trainer.max_epochs=2", "optim.lr=0.004", "trainer.log_every_n_steps=1"]
OTHER_CLASSES = ["data.synthetic.classes=[move_right,move_left,move_up]"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("first")
    result = run_cli(run_dir, data_dir, RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _lr_by_step(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as stream:
        return {int(row["step"]): float(row["lr-AdamW"]) for row in csv.DictReader(stream) if row.get("lr-AdamW")}


def test_a_new_run_in_a_folder_that_holds_one_is_refused_and_changes_nothing(finished_run, data_dir, tmp_path):
    run_dir = _copy(finished_run, tmp_path)
    before = _snapshot(run_dir)
    result = run_cli(run_dir, data_dir, [*TINY_FIT, *OTHER_CLASSES])  # other data and classes, no ckpt_path
    assert result.returncode == 2, result.stderr[-3000:]
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "already holds a run" in errors[0] and "ckpt_path=last" in errors[0], result.stderr
    assert "checkpoints/last.ckpt" in errors[0] and "metrics.json" in errors[0]
    assert "Traceback" not in result.stderr
    assert _snapshot(run_dir) == before  # nothing written: not Hydra's config, not a log, not a checkpoint


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, data_dir):
    """The default run folder is named after the second a run starts: every second a run could
    start in here is taken beforehand by a finished run; the new run takes <that>_2. Run from a
    folder of its own with the default paths (the run folder names Hydra's runtime.cwd)."""
    runs = tmp_path / "outputs" / "train" / "runs"
    now = datetime.datetime.now()
    taken = [runs / (now + datetime.timedelta(seconds=s)).strftime("%Y-%m-%d_%H-%M-%S") for s in range(-1, 120)]
    for folder in taken:
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text("{}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidaccel_train",
            *TINY_FIT,
            "train=false",
            "test=false",
            f"paths.data_dir={data_dir}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Callback FolderPerRun" not in result.stderr, result.stderr[-3000:]  # Hydra would only warn
    new = sorted(set(runs.iterdir()) - set(taken))
    assert len(new) == 1 and new[0].name.endswith("_2") and new[0].name[:-2] in {f.name for f in taken}
    assert (new[0] / ".hydra" / "config.yaml").is_file() and (new[0] / "train.log").is_file()
    assert all(sorted(p.name for p in folder.iterdir()) == ["metrics.json"] for folder in taken)


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["model=x3d_xs", "model.clip.sampling_rate=6"], "model.name: 'x3d_tiny' in the checkpoint, 'x3d_xs' now"),
        (OTHER_CLASSES + ["data.num_classes=3"], "classes: 4 in the checkpoint, 3 in this dataset"),
        (["model.clip.sampling_rate=4"], "data.sampling_rate: 6 in the checkpoint, 4 now"),
    ],
    ids=["model", "classes", "clip"],
)
def test_resuming_with_another_model_classes_or_clip_is_one_error_line(
    finished_run, data_dir, tmp_path, overrides, named
):
    run_dir = _copy(finished_run, tmp_path)
    checkpoints = _snapshot(run_dir / "checkpoints")
    models = [o for o in overrides if o.startswith("model=")]
    base = [o for o in RUN if not (models and o.startswith("model="))]
    result = run_cli(
        run_dir, data_dir, [*models, *base, *overrides[len(models) :], "trainer.max_epochs=3", "ckpt_path=last"]
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and named in errors[0], result.stderr[-3000:]
    assert "size mismatch" not in result.stderr and "Traceback" not in result.stderr
    assert _snapshot(run_dir / "checkpoints") == checkpoints  # no interrupted.ckpt of a half-built run


def test_resuming_with_a_new_learning_rate_and_more_epochs_applies_both_and_says_so(finished_run, data_dir, tmp_path):
    run_dir = _copy(finished_run, tmp_path)
    resumed = run_cli(run_dir, data_dir, [*RUN, "optim.lr=0.001", "trainer.max_epochs=3", "ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = [line for line in (resumed.stdout + resumed.stderr).splitlines() if "settings changed" in line]
    assert len(said) == 1 and "optim.lr: 0.004 -> 0.001" in said[0] and "trainer.max_epochs: 2 -> 3" in said[0]
    # The third epoch's rates are those of a run that had lr=0.001 over 3 epochs all along.
    reference = tmp_path / "reference"
    result = run_cli(reference, data_dir, [*RUN, "optim.lr=0.001", "trainer.max_epochs=3", "test=false"])
    assert result.returncode == 0, result.stderr[-3000:]
    expected, got = _lr_by_step(reference), _lr_by_step(run_dir)
    third_epoch = [step for step in expected if step >= max(_lr_by_step(finished_run)) + 1]
    assert third_epoch and [got[s] for s in third_epoch] == pytest.approx([expected[s] for s in third_epoch], rel=1e-6)
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["run_config"]["optim"]["lr"] == 0.001 and saved["run_config"]["trainer"]["max_epochs"] == 3
    assert saved["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 0.001
