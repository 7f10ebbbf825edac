"""Export a trained classifier as verified fp32 and int8 ExecuTorch programs.

Writes ``model_fp32.pte``, ``model_int8.pte``, ``manifest.json``, ``report.md`` and
``accuracy_latency.png``. Every artifact is run through the ExecuTorch runtime on the test
split (accuracy, agreement with the in-framework model) and timed at batch 1. Everything is
built in a staging folder that replaces the export folder only when all of it succeeded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from vidaccel_train.export.executorch import ExecuTorchModel, lower_to_executorch, write_atomic
from vidaccel_train.models.deploy import to_deploy_form
from vidaccel_train.quiet import native_stderr_muted
from vidaccel_train.quantization import pt2e
from vidaccel_train.training.module import aggregate_views

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ARTIFACT_FORMAT = "executorch-xnnpack"


@dataclass
class ArtifactRecord:
    file: str
    format: str
    precision: str
    sha256: str
    bytes: int
    top1: float
    top5: float
    agreement: float
    latency_ms: float
    threads: int


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def set_runtime_threads(threads: int) -> None:
    """Threads for XNNPACK inside the ExecuTorch runtime and for eager PyTorch alike.

    Load programs after this call: running a program loaded before the pool changed can hang.
    """
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

    with native_stderr_muted():
        if _threadpool_get_thread_count() != threads:
            _unsafe_reset_threadpool(threads)
    torch.set_num_threads(threads)


def median_latency_ms(run: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def float_deploy_form(module, num_frames: int, build_net: Callable[[], nn.Module]) -> nn.Module:
    """The fp32 deploy form of the module's current weights.

    A quantized module holds an exported graph whose parameters keep the deploy form's names,
    so they load straight into a freshly built deploy form (quantization left out).
    """
    if module.quant_state is None:
        return to_deploy_form(module.net, num_frames)
    deployed = to_deploy_form(build_net(), num_frames)
    own = deployed.state_dict()
    trained = {k: v.detach().cpu() for k, v in module.net.state_dict().items() if k in own}
    missing = sorted(set(own) - set(trained))
    if missing:
        raise RuntimeError(f"the quantized graph lacks deploy-form weights {missing[:5]}")
    deployed.load_state_dict(trained)
    return deployed.eval()


def calibrate_int8(net: nn.Module, input_shape, batches, count: int) -> tuple[nn.Module, nn.Module]:
    """Post-training calibration of a copy of ``net``: (observed model, converted int8 model)."""
    prepared = pt2e.prepare(net, input_shape, "ptq")
    pt2e.calibrate(prepared, batches, count)
    return prepared, pt2e.convert_int8(prepared)


def _evaluate(
    loader, predictors: dict[str, Callable[[torch.Tensor], torch.Tensor]], reference: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Video-level top-1/top-5 of each predictor, as the test step scores them (programs run
    each view alone at batch 1; predictions averaged per video), and top-1 agreement with its
    reference."""
    stats = {name: {"top1": 0, "top5": 0, "agree": 0} for name in predictors}
    count = 0
    top1_of: dict[str, torch.Tensor] = {}
    for batch in loader:
        for views, label in zip(batch["video"], batch["label"]):
            count += 1
            for name, predict in predictors.items():
                if isinstance(predict, nn.Module):  # eager models take every view at once
                    logits = predict(views)
                else:  # a program is exported for batch 1
                    logits = torch.stack([predict(view.unsqueeze(0).contiguous()).reshape(-1) for view in views])
                probabilities = aggregate_views(logits.unsqueeze(0)).reshape(-1)
                ranked = probabilities.topk(min(5, probabilities.numel())).indices
                top1_of[name] = ranked[0]
                stats[name]["top1"] += int(ranked[0] == label)
                stats[name]["top5"] += int(label in ranked)
            for name, other in reference.items():
                stats[name]["agree"] += int(top1_of[name] == top1_of[other])
    if count == 0:
        raise RuntimeError("the test split is empty: nothing to verify the artifacts on")
    return {name: {k: v / count for k, v in s.items()} for name, s in stats.items()}


def export_artifacts(
    module,
    datamodule,
    out_dir: str | Path,
    build_net: Callable[[], nn.Module],
    model_name: str,
    threads: int = 4,
    latency_repeats: int = 20,
    calibration_batches: int = 16,
) -> dict:
    """Lower, verify, time and write the artifacts of ``module``; returns the manifest."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.parent.glob(f".{out_dir.name}.*-*"):  # from an export that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    staging = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}"
    retired = out_dir.parent / f".{out_dir.name}.retired-{os.getpid()}"
    staging.mkdir()
    try:
        manifest = _build(module, datamodule, staging, build_net, model_name, threads, latency_repeats, calibration_batches)
        # Whole folders change places: a reader sees the old export or the new one, never a mix.
        if out_dir.exists():
            os.replace(out_dir, retired)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    log.info("Exported %s", ", ".join(f"{a['file']} (top1 {a['top1']:.3f}, {a['latency_ms']:.1f} ms)" for a in manifest["artifacts"]))
    return manifest


@torch.no_grad()
def _build(module, datamodule, staging: Path, build_net, model_name, threads, latency_repeats, calibration_batches) -> dict:
    # The programs are CPU programs and are verified on the CPU, whatever device trained the
    # model: move it, and have every tensor made along the way made there too.
    if module.device.type != "cpu":
        log.info("Exporting on the CPU: moving the model off %s", module.device)
    with torch.device("cpu"):
        return _build_on_cpu(module.cpu().eval(), datamodule, staging, build_net, model_name, threads, latency_repeats,
                             calibration_batches)


def _build_on_cpu(module, datamodule, staging: Path, build_net, model_name, threads, latency_repeats, calibration_batches) -> dict:
    clip = datamodule.clip
    shape = (1, *datamodule.clip_shape)
    example = torch.randn(shape)

    float_model = float_deploy_form(module, clip.num_frames, build_net)
    if module.quant_state is not None:
        fake_quant, int8_model = module.net, module.int8_net()
        source = f"{module.quant_state['mode']} model"
    else:  # an fp32 run: calibrate a copy after training, as quant=ptq would
        fake_quant, int8_model = calibrate_int8(module.net, shape[1:], datamodule.train_dataloader(), calibration_batches)
        source = f"post-training calibration on {calibration_batches} training batches"

    started = time.perf_counter()
    paths = {}
    for precision, model in (("fp32", float_model), ("int8", int8_model)):
        paths[precision] = write_atomic(staging / f"model_{precision}.pte", lower_to_executorch(model, example).buffer)
    lowering_s = time.perf_counter() - started

    set_runtime_threads(threads)  # before loading: XNNPACK takes its thread pool at load time
    programs = {precision: (path, ExecuTorchModel(path)) for precision, path in paths.items()}
    predictors = {
        "eager": module.net if module.quant_state is None else float_model,
        "fp32": programs["fp32"][1],
        "fake_quant": fake_quant,
        "int8": programs["int8"][1],
    }
    scores = _evaluate(datamodule.test_dataloader(), predictors, {"fp32": "eager", "int8": "fake_quant"})
    # The vanilla-PyTorch reference is the train form run eagerly (its weights do not change its speed).
    eager_train_form = module.net if module.quant_state is None else build_net().eval()
    timed = {"eager": eager_train_form, "fp32": programs["fp32"][1], "int8": programs["int8"][1]}
    latency = {name: median_latency_ms(lambda run=run: run(example), latency_repeats) for name, run in timed.items()}

    artifacts = []
    for precision, (path, _) in programs.items():
        artifacts.append(
            asdict(
                ArtifactRecord(
                    file=path.name,
                    format=ARTIFACT_FORMAT,
                    precision=precision,
                    sha256=sha256_of(path),
                    bytes=path.stat().st_size,
                    top1=scores[precision]["top1"],
                    top5=scores[precision]["top5"],
                    agreement=scores[precision]["agree"],
                    latency_ms=latency[precision],
                    threads=threads,
                )
            )
        )
    manifest = {
        "model": model_name,
        "classes": list(module.class_names or datamodule.class_names),
        "input_shape": list(shape),
        "layout": "B,C,T,H,W",
        "mean": list(datamodule.mean),
        "std": list(datamodule.std),
        "num_frames": clip.num_frames,
        "sampling_rate": clip.sampling_rate,
        "target_fps": clip.target_fps,
        "crop_size": datamodule.crop_size,
        "short_side": datamodule.eval_short_side,
        "int8_source": source,
        "reference_eager_fp32": {
            "top1": scores["eager"]["top1"],
            "top5": scores["eager"]["top5"],
            "latency_ms": latency["eager"],
            "threads": threads,
        },
        "lowering_seconds": round(lowering_s, 1),
        "artifacts": artifacts,
    }
    _write_report(staging, manifest)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _write_report(folder: Path, manifest: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = manifest["reference_eager_fp32"]
    points = [("PyTorch eager fp32", reference["latency_ms"], reference["top1"])] + [
        (f"ExecuTorch {a['precision']}", a["latency_ms"], a["top1"]) for a in manifest["artifacts"]
    ]
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, latency, top1 in points:
        axes.scatter(latency, top1 * 100, s=60, label=label)
    axes.set_xscale("log")
    axes.set_xlabel(f"latency, batch 1, {reference['threads']} threads (ms, log scale)")
    axes.set_ylabel("test top-1 (%)")
    axes.set_title(f"{manifest['model']}: accuracy against latency")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(folder / "accuracy_latency.png", dpi=120)
    plt.close(figure)

    rows = [
        f"| {label} | {top1 * 100:.1f} | {latency:.2f} | {reference['latency_ms'] / latency:.1f}x |"
        for label, latency, top1 in points
    ]
    details = [
        f"| {a['file']} | {a['precision']} | {a['bytes'] / 1e6:.2f} MB | {a['agreement'] * 100:.1f}% | `{a['sha256'][:16]}…` |"
        for a in manifest["artifacts"]
    ]
    (folder / "report.md").write_text(
        "\n".join(
            [
                f"# Export report: {manifest['model']}",
                "",
                f"Input {manifest['input_shape']} ({manifest['layout']}), {manifest['num_frames']} frames "
                f"every {manifest['sampling_rate']} at {manifest['target_fps']:g} fps; int8 from {manifest['int8_source']}.",
                "",
                "| model | test top-1 (%) | latency (ms) | speed-up vs eager |",
                "| --- | --- | --- | --- |",
                *rows,
                "",
                "| artifact | precision | size | top-1 agreement with in-framework model | sha256 |",
                "| --- | --- | --- | --- | --- |",
                *details,
                "",
                "![accuracy against latency](accuracy_latency.png)",
                "",
            ]
        )
    )
