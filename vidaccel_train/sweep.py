"""Sweeps: a summary of every job when a Hydra multirun ends, and an Optuna search driven from
``hparams_search=<name>``.

The summary reads what each job left in its directory (``.hydra/overrides.yaml``,
``metrics.json``, ``export/manifest.json``, ``error.txt``) and writes ``sweep_summary.csv``,
``sweep_summary.md`` and ``sweep_pareto.png`` (int8 top-1 against int8 latency, Pareto front
marked) into the sweep directory.

A job that fails does not end the sweep: its error line goes into ``<job dir>/error.txt`` (and
its log, with the traceback when it is not a user error), the remaining jobs run, the summary
marks it failed with that line, and the command then ends with one ``error:`` line and exit code 1.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from vidaccel_train.errors import ArtifactError, as_user_error
from vidaccel_train.export.manifest import ARTIFACT_FORMAT, MANIFEST, Manifest

log = logging.getLogger(__name__)

# A failed job's error line, in its own folder: what the summary shows for it.
ERROR_FILE = "error.txt"

COLUMNS = (
    "job",
    "overrides",
    "status",
    "fp32_top1",
    "int8_top1",
    "int8_latency_ms",
    "int8_latency_range_ms",
    "int8_mb",
    "fp32_latency_ms",
    "error",
)


def error_line(err: BaseException, limit: int = 500) -> str:
    """One line for a failed job: a user error's own message (also when Hydra wrapped it while
    building a component), else the traceback's last line, ``Type: message`` (the first line of
    a message of several; the component's own error where Hydra wrapped one)."""
    user_error = as_user_error(err)
    if user_error is not None:
        text = str(user_error)
    else:
        while isinstance(err, InstantiationException) and err.__cause__ is not None:
            err = err.__cause__
        message = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        text = f"{type(err).__name__}: {message}" if message else type(err).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def record_failure(job_dir: str | Path, err: BaseException) -> str:
    """Write ``err``'s :func:`error_line` to ``<job_dir>/error.txt``; returns the line."""
    line = error_line(err)
    path = Path(job_dir) / ERROR_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(line + "\n")
    except OSError as write_error:  # the summary then calls the job unfinished; the log still has it
        log.warning("could not record the failure in %s: %s", path, write_error)
    return line


def job_row(job_dir: Path) -> dict[str, Any]:
    """One job's overrides, accuracies and int8 artifact figures (blank where it has none)."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    row: dict[str, Any] = {column: "" for column in COLUMNS}
    row.update(job=job_dir.name, overrides=" ".join(overrides or []))
    error_file = job_dir / ERROR_FILE  # before metrics.json: a job run again over an older one
    if error_file.is_file():
        row.update(status="failed", error=" ".join(error_file.read_text().split()))
        return row
    metrics_file = job_dir / "metrics.json"
    if not metrics_file.is_file():
        row["status"] = "unfinished"  # still running, or killed
        return row
    metrics = json.loads(metrics_file.read_text())["metrics"]
    row["status"] = "done"
    quantized = "test_fp32/top1" in metrics  # quantized runs test int8 as test/*, fp32 as test_fp32/*
    row["fp32_top1"] = metrics.get("test_fp32/top1" if quantized else "test/top1", "")
    if quantized:
        row["int8_top1"] = metrics.get("test/top1", "")
    if (job_dir / "export" / MANIFEST).is_file():
        try:
            # The XNNPACK programs (an x86 program, if exported, is another int8 of its own).
            listed = Manifest.read(job_dir / "export").artifacts
            artifacts = {a.precision: a for a in listed if a.format == ARTIFACT_FORMAT}
        except ArtifactError as err:  # the row keeps the run's metrics; the summary goes on
            log.warning("%s", err)
            return row
        int8, fp32 = artifacts.get("int8"), artifacts.get("fp32")
        if int8 is not None:
            row["int8_top1"] = int8.top1 if int8.top1 is not None else row["int8_top1"]
            row["int8_latency_ms"] = _blank(int8.latency_ms)
            if int8.latency_range_ms:  # the lowest and highest round median (exports before it have none)
                # As recorded, not rounded again: the plot's error bar is the distance to the figure.
                row["int8_latency_range_ms"] = "{}-{}".format(*int8.latency_range_ms)
            row["int8_mb"] = round(int8.bytes / 1e6, 3) if int8.bytes else ""
        row["fp32_latency_ms"] = _blank(fp32.latency_ms if fp32 is not None else None)
    return row


def _blank(value) -> Any:
    """A figure for the table, blank when the export did not record it."""
    return "" if value is None else value


def latency_range(row: dict[str, Any]) -> tuple[float, float]:
    """A row's int8 latency range in ms (the figure twice when the export recorded none)."""
    if row.get("int8_latency_range_ms"):
        low, high = row["int8_latency_range_ms"].split("-")
        return float(low), float(high)
    return float(row["int8_latency_ms"]), float(row["int8_latency_ms"])


def pareto_front(points: list[tuple[float, float]], ranges: list[tuple[float, float]] | None = None) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and accuracy (higher).

    ``points`` are ``(latency, accuracy)``; ``ranges`` the ``(low, high)`` latency each was
    measured within. Latencies whose ranges overlap count as equal, so the same architecture
    timed twice (a sweep over the learning rate) is not drawn as a trade-off: the more accurate
    job dominates the other.
    """
    ranges = ranges or [(latency, latency) for latency, _ in points]

    def faster(j: int, i: int) -> bool:  # j's latency is below i's beyond both ranges
        return ranges[j][1] < ranges[i][0]

    def not_slower(j: int, i: int) -> bool:
        return faster(j, i) or not faster(i, j)

    front = []
    for i, (_, accuracy) in enumerate(points):
        dominated = any(
            not_slower(j, i) and a2 >= accuracy and (faster(j, i) or a2 > accuracy)
            for j, (_, a2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def write_summary(sweep_dir: str | Path, job_dirs: list[Path] | None = None) -> list[dict[str, Any]]:
    """Summarise the jobs of ``sweep_dir`` (its numbered subfolders unless ``job_dirs`` is given)."""
    sweep_dir = Path(sweep_dir)
    if job_dirs is None:
        job_dirs = sorted(
            (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
        )
    rows = [job_row(job) for job in job_dirs]
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]).replace("|", "\\|") for c in COLUMNS) + " |" for row in rows]
    failed = sum(row["status"] == "failed" for row in rows)
    title = f"# Sweep {sweep_dir.name}: {len(rows)} jobs" + (f", {failed} failed" if failed else "")
    (sweep_dir / "sweep_summary.md").write_text(title + "\n\n" + "\n".join(lines) + "\n")
    _plot(sweep_dir / "sweep_pareto.png", rows)
    log.info("Sweep summary of %d jobs in %s", len(rows), sweep_dir / "sweep_summary.md")
    return rows


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r["int8_latency_ms"] != "" and r["int8_top1"] != ""]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    if measured:
        points = [(float(r["int8_latency_ms"]), float(r["int8_top1"]) * 100) for r in measured]
        ranges = [latency_range(r) for r in measured]
        front = pareto_front(points, ranges)
        axes.errorbar(
            [p[0] for p in points],
            [p[1] for p in points],
            xerr=[
                [p[0] - low for p, (low, _) in zip(points, ranges)],
                [high - p[0] for p, (_, high) in zip(points, ranges)],
            ],
            fmt="o",
            color="tab:blue",
            capsize=3,
            label="job (latency range over timing rounds)",
        )
        for (latency, accuracy), row in zip(points, measured):
            axes.annotate(row["job"], (latency, accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8)
        line = sorted(points[i] for i in front)
        axes.plot(
            *zip(*line),
            color="tab:red",
            marker="o",
            markersize=12,
            markerfacecolor="none",
            zorder=3,
            label="Pareto front",
        )
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no job has an int8 export yet", ha="center", va="center", transform=axes.transAxes)
    not_done = {status: [r["job"] for r in rows if r["status"] == status] for status in ("failed", "unfinished")}
    if any(not_done.values()):  # marked, as in the summary: the plot never hides that jobs are missing
        axes.text(
            0.01,
            0.01,
            "; ".join(f"{status}: job {', '.join(jobs)}" for status, jobs in not_done.items() if jobs)
            + " (errors in sweep_summary.md)",
            fontsize=8,
            color="tab:red",
            transform=axes.transAxes,
        )
    axes.set_xlabel("int8 latency, batch 1 (ms): lowest round median, bar: range of round medians")
    axes.set_ylabel("int8 test top-1 (%)")
    axes.set_title("accuracy against latency over the sweep")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


class SweepSummary(Callback):
    """Hydra callback: a failed job is recorded and the sweep goes on; the summary is written
    when the multirun ends, which then exits with code 1 if any job failed.

    Hydra's launcher (1.3) runs every job of a batch but keeps a job's exception, and its sweeper
    re-raises the first one after the batch: the later batches and ``on_multirun_end`` (this
    summary) never run, and the command ends in a traceback (hydra #2284). Here a failed job's
    error is recorded in its folder and logged when the job ends, and its return is marked
    completed so the sweeper goes on. Single runs (not ``-m``) are left as they are.
    """

    @staticmethod
    def _multirun(config: DictConfig) -> bool:
        return config.hydra.mode == RunMode.MULTIRUN

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self._multirun(config):  # a job run again in the same folder: its earlier failure is gone
            (Path(config.hydra.runtime.output_dir) / ERROR_FILE).unlink(missing_ok=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not self._multirun(config) or job_return.status != JobStatus.FAILED:
            return
        err = job_return._return_value  # the property re-raises it
        line = record_failure(config.hydra.runtime.output_dir, err)
        # In the job's log file and on the console (Hydra named the job's overrides as it began);
        # a traceback only where it is not a user error.
        traceback = (type(err), err, err.__traceback__) if as_user_error(err) is None else None
        log.error("job %s failed: %s", config.hydra.job.num, line, exc_info=traceback)
        job_return.status = JobStatus.COMPLETED  # so the sweeper goes on (see the class docstring)
        job_return.return_value = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        rows = write_summary(config.hydra.sweep.dir)
        failed = [row["job"] for row in rows if row["status"] != "done"]
        if failed:
            summary = Path(config.hydra.sweep.dir) / "sweep_summary.md"
            print(
                f"error: {len(failed)} of {len(rows)} jobs failed (job {', '.join(failed)}); "
                f"the summary, with each one's error, is in {summary}",
                file=sys.stderr,
            )
            sys.exit(1)  # a SystemExit: Hydra passes it on (it turns exceptions into warnings here)


# ---------------------------------------------------------------------------- search


def _suggest(trial, space: dict[str, Any]):
    name, kind = space["name"], space["type"]
    if kind == "float":
        return trial.suggest_float(name, float(space["low"]), float(space["high"]), log=bool(space.get("log", False)))
    if kind == "int":
        return trial.suggest_int(name, int(space["low"]), int(space["high"]), step=int(space.get("step", 1)))
    if kind == "categorical":
        return trial.suggest_categorical(name, list(space["choices"]))
    raise ValueError(f"hparams_search.params ({name}): type must be float, int or categorical, got {kind!r}")


def search(
    search_cfg: DictConfig,
    sweep_dir: str | Path,
    run_trial: Callable[[list[str], Path], dict[str, float]],
) -> Any:
    """Optuna (TPE, seeded) over ``search_cfg.params`` (a list of ``{name, type, ...}`` spaces,
    ``name`` a config key); each trial is a whole run in
    ``<sweep_dir>/<trial number>`` given its overrides; returns the study.

    The study lives in ``<sweep_dir>/study.db``: running the same search again in the same
    folder continues it (``n_trials`` more trials).
    """
    import optuna

    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    metric = search_cfg.metric
    study = optuna.create_study(
        study_name=search_cfg.get("study_name", "vidaccel"),
        storage=f"sqlite:///{sweep_dir / 'study.db'}",
        load_if_exists=True,
        direction=search_cfg.direction,
        sampler=optuna.samplers.TPESampler(seed=search_cfg.get("sampler_seed", 0)),
    )

    def objective(trial) -> float:
        overrides = [f"{space.name}={_suggest(trial, space)}" for space in search_cfg.params]
        job_dir = sweep_dir / str(trial.number)
        try:
            metrics = run_trial(overrides, job_dir)
        except Exception as err:  # Optuna logs it and goes on; the summary shows its line
            record_failure(job_dir, err)
            raise
        if metric not in metrics:
            raise KeyError(f"hparams_search.metric={metric} was not logged; the run logged {sorted(metrics)}")
        return metrics[metric]

    study.optimize(objective, n_trials=search_cfg.n_trials, catch=(RuntimeError, ValueError))
    job_dirs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    write_summary(sweep_dir, job_dirs)
    if not any(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials):
        raise RuntimeError(f"no trial completed; each failure is logged above and in {sweep_dir}/sweep_summary.md")
    best = study.best_trial
    (sweep_dir / "best.yaml").write_text(
        yaml.safe_dump(
            {"metric": metric, "value": best.value, "trial": best.number, "params": best.params}, sort_keys=False
        )
    )
    log.info("Best %s = %.4f in trial %d: %s", metric, best.value, best.number, best.params)
    return study
