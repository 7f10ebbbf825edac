"""Sweeps: a summary of every job when a Hydra multirun ends, and an Optuna search driven from
``hparams_search=<name>``.

The summary reads what each job left in its directory (``.hydra/overrides.yaml``,
``metrics.json``, ``export/manifest.json``) and writes ``sweep_summary.csv``,
``sweep_summary.md`` and ``sweep_pareto.png`` (int8 top-1 against int8 latency, Pareto front
marked) into the sweep directory.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

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
)


def job_row(job_dir: Path) -> dict[str, Any]:
    """One job's overrides, accuracies and int8 artifact figures (blank where it has none)."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    row: dict[str, Any] = {column: "" for column in COLUMNS}
    row.update(job=job_dir.name, overrides=" ".join(overrides or []))
    metrics_file = job_dir / "metrics.json"
    if not metrics_file.is_file():
        row["status"] = "failed or unfinished"
        return row
    metrics = json.loads(metrics_file.read_text())["metrics"]
    row["status"] = "done"
    quantized = "test_fp32/top1" in metrics  # quantized runs test int8 as test/*, fp32 as test_fp32/*
    row["fp32_top1"] = metrics.get("test_fp32/top1" if quantized else "test/top1", "")
    if quantized:
        row["int8_top1"] = metrics.get("test/top1", "")
    manifest_file = job_dir / "export" / "manifest.json"
    if manifest_file.is_file():
        artifacts = {a["precision"]: a for a in json.loads(manifest_file.read_text())["artifacts"]}
        int8, fp32 = artifacts.get("int8", {}), artifacts.get("fp32", {})
        row["int8_top1"] = int8.get("top1", row["int8_top1"])
        row["int8_latency_ms"] = int8.get("latency_ms", "")
        if "latency_range_ms" in int8:  # the lowest and highest round median (exports before it have none)
            # As recorded, not rounded again: the plot's error bar is the distance to the figure.
            row["int8_latency_range_ms"] = "{}-{}".format(*int8["latency_range_ms"])
        row["int8_mb"] = round(int8["bytes"] / 1e6, 3) if "bytes" in int8 else ""
        row["fp32_latency_ms"] = fp32.get("latency_ms", "")
    return row


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
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    (sweep_dir / "sweep_summary.md").write_text(
        f"# Sweep {sweep_dir.name}: {len(rows)} jobs\n\n" + "\n".join(lines) + "\n"
    )
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
    axes.set_xlabel("int8 latency, batch 1 (ms): lowest round median, bar: range of round medians")
    axes.set_ylabel("int8 test top-1 (%)")
    axes.set_title("accuracy against latency over the sweep")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


class SweepSummary(Callback):
    """Hydra callback: writes the sweep summary when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(config.hydra.sweep.dir)


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
        metrics = run_trial(overrides, job_dir)
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
