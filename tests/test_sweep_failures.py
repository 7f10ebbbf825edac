"""A Hydra multirun in which some jobs fail (hydra #2284): the other jobs still run, the sweep
still writes its summary and Pareto plot with each failed job marked and its error line, and the
command ends with one ``error:`` line naming how many jobs failed and where the summary is."""

import csv

from support import TINY_FIT, run_cli


def test_a_sweep_with_failed_jobs_still_writes_its_summary_and_names_them(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    # Two mistakes that compose (Hydra validates every job's config before the first runs) and
    # fail only when the job is built or trained: a negative weight decay (PyTorch's ValueError
    # when the optimizer is made: a traceback in the job's log) and a typo in a precision (a
    # user error, said when the export callback is built). Jobs, in Hydra's order:
    # 0 wd=-1 int8, 1 wd=-1 int9, 2 wd=0.01 int8 (done), 3 wd=0.01 int9.
    result = run_cli(
        tmp_path / "unused",
        data_dir,
        [
            "-m",
            f"hydra.sweep.dir={sweep}",
            *TINY_FIT,
            "+trainer.fast_dev_run=true",
            "optim.weight_decay=-1,0.01",
            "callbacks.export.precisions=[int8],[int9]",
        ],
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "3 of 4 jobs failed" in errors[0] and str(sweep / "sweep_summary.md") in errors[0]
    assert "Traceback" not in result.stderr  # the sweep's own end: one line, no traceback

    rows = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    assert [row["job"] for row in rows] == ["0", "1", "2", "3"]
    assert [row["status"] for row in rows] == ["failed", "failed", "done", "failed"]
    assert rows[0]["error"].startswith("ValueError: Invalid weight_decay")  # the exception's last line
    for row in (rows[1], rows[3]):  # the user error's own line
        assert (
            row["error"].startswith("callbacks.export.precisions must name one or more of") and "int9" in row["error"]
        )
    assert rows[2]["error"] == "" and rows[2]["fp32_top1"] != ""
    summary = (sweep / "sweep_summary.md").read_text()
    assert "3 failed" in summary and "Invalid weight_decay" in summary
    assert (sweep / "sweep_pareto.png").stat().st_size > 0

    # Each failed job keeps its error line in its own folder, the traceback only for a bug.
    assert (sweep / "0" / "error.txt").read_text().startswith("ValueError: Invalid weight_decay")
    assert "int9" in (sweep / "1" / "error.txt").read_text()
    assert not (sweep / "2" / "error.txt").exists() and (sweep / "2" / "metrics.json").is_file()
    assert "Traceback" in (sweep / "0" / "train.log").read_text()
    assert "Traceback" not in (sweep / "1" / "train.log").read_text()
