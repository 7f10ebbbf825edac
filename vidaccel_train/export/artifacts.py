"""Export a trained classifier as verified int8 (and fp32) ExecuTorch programs.

Writes ``model_<precision>.pte`` for each chosen precision, ``manifest.json``, ``report.md`` and
``accuracy_latency.png``. Every artifact is run through the ExecuTorch runtime on every test
view (accuracy, agreement and logit error against the in-framework model) and timed at batch 1;
each stage's seconds go in the manifest. Everything is built in a staging folder that replaces
the export folder only when all of it succeeded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from vidaccel_train.data.clips import aggregate_views
from vidaccel_train.errors import ConfigError
from vidaccel_train.export.executorch import ExecuTorchModel, lower_to_executorch
from vidaccel_train.export.manifest import ARTIFACT_FORMAT, MANIFEST, sha256_of
from vidaccel_train.files import atomic_path, remove_leftovers, write_atomic
from vidaccel_train.models.deploy import to_deploy_form
from vidaccel_train.quantization import pt2e
from vidaccel_train.quiet import native_stderr_muted

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")


@dataclass
class ArtifactRecord:
    file: str
    format: str
    precision: str
    sha256: str
    bytes: int
    top1: float
    top5: float
    # Against the in-framework model this artifact was lowered from, on every test view.
    agreement: float  # share of videos whose top-1 (views averaged) is the same
    clip_agreement: float  # share of single views whose top-1 is the same
    logit_max_abs_error: float
    logit_cosine_min: float
    # Clips ranked differently, and the widest top-1/top-2 logit gap the reference had on any
    # of them: a gap within the logit error means the clip was a near-tie, not a broken program.
    disagreeing_clips: int
    widest_disagreeing_gap: float
    latency_ms: float
    threads: int


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


class StageClock:
    """Seconds spent per export stage, logged as each one ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 1)
        log.info("Export: %s took %.1f s", name.replace("_", " "), self.seconds[name])


def _collect_logits(loader, predictors: dict[str, Callable[[torch.Tensor], torch.Tensor]], known=None):
    """Every predictor's logits on every test view, ``(videos, views, classes)``, and the labels.

    In-framework models take a video's views as one batch; programs are exported for batch 1
    and run each view alone. ``known`` logits (from the test that just ran) are taken as they are.
    """
    known = known or {}
    predictors = {name: predict for name, predict in predictors.items() if name not in known}
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in predictors}
    labels = []
    for batch in loader:
        valid = batch.get("valid", torch.ones(len(batch["label"]), dtype=torch.bool))
        for views, label, readable in zip(batch["video"], batch["label"], valid):
            if not readable:  # an unreadable video (named in bad_files.txt): left out, as the test does
                continue
            labels.append(int(label))
            for name, predict in predictors.items():
                if isinstance(predict, nn.Module):
                    out = predict(views)
                else:
                    out = torch.stack([predict(view.unsqueeze(0).contiguous()).reshape(-1) for view in views])
                logits[name].append(out.float())
    if not labels:
        raise RuntimeError("the test split is empty: nothing to verify the artifacts on")
    return {**known, **{name: torch.stack(values) for name, values in logits.items()}}, torch.tensor(labels)


def _tested_logits(module, datamodule, precisions) -> dict[str, torch.Tensor]:
    """The references' logits as the run's test just computed them, where that test covered the
    whole test split exactly (see ``VideoClassifier.test_logits``): ``reference_<precision>``."""
    recorded = getattr(module, "test_logits", None) or {}
    if module.quant_state is None:
        stages = {"fp32": "test"}  # an fp32 run's int8 reference is calibrated here, never tested
    else:
        stages = {"fp32": "test_fp32", "int8": "test"}
    expected = (len(datamodule.datasets["test"]), datamodule.test_views) if "test" in datamodule.datasets else None
    return {
        f"reference_{precision}": recorded[stage]
        for precision, stage in stages.items()
        if stage in recorded
        and tuple(recorded[stage].shape[:2]) == expected
        and (precision == "fp32" or precision in precisions)
    }


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Video-level top-1/top-5 as the test step scores them (views' probabilities averaged)."""
    probabilities = aggregate_views(logits)
    ranked = probabilities.topk(min(5, probabilities.shape[-1]), dim=-1).indices
    return {
        "top1": (ranked[:, 0] == labels).float().mean().item(),
        "top5": (ranked == labels[:, None]).any(-1).float().mean().item(),
    }


def _fidelity(artifact: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How closely an artifact's logits follow its reference's, per video and per view."""
    video_same = aggregate_views(artifact).argmax(-1) == aggregate_views(reference).argmax(-1)
    clips, clips_ref = artifact.flatten(0, 1), reference.flatten(0, 1)
    clip_same = clips.argmax(-1) == clips_ref.argmax(-1)
    cosine = torch.nn.functional.cosine_similarity(clips, clips_ref, dim=-1)
    top2 = clips_ref.topk(min(2, clips_ref.shape[-1]), dim=-1).values
    gaps = (top2[:, 0] - top2[:, -1])[~clip_same]
    return {
        "agreement": video_same.float().mean().item(),
        "clip_agreement": clip_same.float().mean().item(),
        "logit_max_abs_error": (clips - clips_ref).abs().max().item(),
        "logit_cosine_min": cosine.min().item(),
        "disagreeing_clips": int((~clip_same).sum()),
        "widest_disagreeing_gap": gaps.max().item() if len(gaps) else 0.0,
    }


def export_artifacts(
    module,
    datamodule,
    out_dir: str | Path,
    build_net: Callable[[], nn.Module],
    model_name: str,
    threads: int = 4,
    latency_repeats: int = 20,
    calibration_batches: int = 16,
    precisions: tuple[str, ...] = PRECISIONS,
) -> dict:
    """Lower, verify, time and write the artifacts of ``module``; returns the manifest."""
    precisions = check_precisions(precisions)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir.parent, f"{out_dir.name}*")  # from an export that was killed
    settings = dict(
        threads=threads, latency_repeats=latency_repeats, calibration_batches=calibration_batches, precisions=precisions
    )
    # Whole folders change places: a reader sees the old export or the new one, never a mix.
    with atomic_path(out_dir) as staging:
        staging.mkdir()
        manifest = _build(module, datamodule, staging, build_net, model_name, **settings)
    log.info(
        "Exported %s",
        ", ".join(
            f"{a['file']} (top1 {a['top1']:.3f}, agrees on {a['clip_agreement']:.1%} of clips, {a['latency_ms']:.1f} ms)"
            for a in manifest["artifacts"]
        ),
    )
    return manifest


def check_precisions(precisions) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(str(p) for p in precisions))
    unknown = [p for p in chosen if p not in PRECISIONS]
    if not chosen or unknown:
        raise ConfigError(
            f"callbacks.export.precisions must name one or more of {list(PRECISIONS)}, got {list(precisions)}"
        )
    return chosen


@torch.no_grad()
def _build(module, datamodule, staging: Path, build_net, model_name, **settings) -> dict:
    # The programs are CPU programs and are verified on the CPU, whatever device trained the
    # model: move it, and have every tensor made along the way made there too.
    if module.device.type != "cpu":
        log.info("Exporting on the CPU: moving the model off %s", module.device)
    # Latency is timed on `threads` threads; give PyTorch its own count back afterwards, or every
    # later job of a multirun (same process) would train on one thread.
    torch_threads = torch.get_num_threads()
    try:
        with torch.device("cpu"):
            return _build_on_cpu(module.cpu().eval(), datamodule, staging, build_net, model_name, **settings)
    finally:
        torch.set_num_threads(torch_threads)


def _build_on_cpu(
    module, datamodule, staging: Path, build_net, model_name, threads, latency_repeats, calibration_batches, precisions
) -> dict:
    clip = datamodule.clip
    shape = (1, *datamodule.clip_shape)
    example = torch.randn(shape)
    clock = StageClock()

    float_model = float_deploy_form(module, clip.num_frames, build_net)
    # The in-framework model each program is checked against: what the run's test measured.
    references = {"fp32": module.net if module.quant_state is None else float_model}
    if "int8" in precisions:
        with clock.stage("int8_conversion"):
            if module.quant_state is not None:
                references["int8"] = module.int8_net()
                source = f"{module.quant_state.mode} model"
            else:  # an fp32 run: calibrate a copy after training, as quant=ptq would
                _, references["int8"] = calibrate_int8(
                    module.net, shape[1:], datamodule.calibration_dataloader(), calibration_batches
                )
                source = f"post-training calibration on {calibration_batches} training batches"
    lowered = {"fp32": float_model, "int8": references.get("int8")}

    paths = {}
    for precision in precisions:
        with clock.stage(f"lowering_{precision}"):
            program = lower_to_executorch(lowered[precision], example)
            paths[precision] = write_atomic(staging / f"model_{precision}.pte", program.buffer)

    set_runtime_threads(threads)  # before loading: XNNPACK takes its thread pool at load time
    programs = {precision: ExecuTorchModel(path) for precision, path in paths.items()}
    with clock.stage("verification"):
        predictors = {f"reference_{p}": references[p] for p in references}
        predictors.update({p: programs[p] for p in precisions})
        logits, labels = _collect_logits(
            datamodule.test_dataloader(), predictors, _tested_logits(module, datamodule, precisions)
        )
    # The vanilla-PyTorch reference is the train form run eagerly (its weights do not change its speed).
    with clock.stage("latency"):
        eager_train_form = module.net if module.quant_state is None else build_net().eval()
        timed = {"eager": eager_train_form, **programs}
        latency = {
            name: median_latency_ms(lambda run=run: run(example), latency_repeats) for name, run in timed.items()
        }

    artifacts = []
    for precision, path in paths.items():
        record = ArtifactRecord(
            file=path.name,
            format=ARTIFACT_FORMAT,
            precision=precision,
            sha256=sha256_of(path),
            bytes=path.stat().st_size,
            **_accuracy(logits[precision], labels),
            **_fidelity(logits[precision], logits[f"reference_{precision}"]),
            latency_ms=latency[precision],
            threads=threads,
        )
        artifacts.append(asdict(record))
    videos, views = logits["reference_fp32"].shape[:2]
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
        "display_aspect": datamodule.display_aspect,
        "test_views": {"clips": datamodule.test_clips, "crops": datamodule.test_crops},
        "int8_source": source if "int8" in precisions else None,
        "verified_on": {"videos": videos, "clips": videos * views},
        "reference_eager_fp32": {
            **_accuracy(logits["reference_fp32"], labels),
            "latency_ms": latency["eager"],
            "threads": threads,
        },
        "stage_seconds": clock.seconds,
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
        f"| {a['file']} | {a['precision']} | {a['bytes'] / 1e6:.2f} MB | {a['agreement'] * 100:.1f}% | "
        f"{a['clip_agreement'] * 100:.1f}% | {a['logit_max_abs_error']:.3g} | {a['logit_cosine_min']:.5f} | "
        f"{a['disagreeing_clips']} (widest gap {a['widest_disagreeing_gap']:.3g}) | `{a['sha256'][:16]}…` |"
        for a in manifest["artifacts"]
    ]
    verified = manifest["verified_on"]
    stages = ", ".join(
        f"{name.replace('_', ' ')} {seconds:.1f} s" for name, seconds in manifest["stage_seconds"].items()
    )
    (folder / "report.md").write_text(
        "\n".join(
            [
                f"# Export report: {manifest['model']}",
                "",
                f"Input {manifest['input_shape']} ({manifest['layout']}), {manifest['num_frames']} frames "
                f"every {manifest['sampling_rate']} at {manifest['target_fps']:g} fps"
                + (f"; int8 from {manifest['int8_source']}." if manifest["int8_source"] else "."),
                "",
                "| model | test top-1 (%) | latency (ms) | speed-up vs eager |",
                "| --- | --- | --- | --- |",
                *rows,
                "",
                f"Each artifact against the in-framework model it was lowered from, on all {verified['clips']} test "
                f"views ({verified['videos']} videos); a disagreeing clip whose reference top-1/top-2 logit gap is "
                "within the logit error was a near-tie.",
                "",
                "| artifact | precision | size | video agreement | clip agreement | max logit error | min cosine "
                "| disagreeing clips | sha256 |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                *details,
                "",
                f"Export stages: {stages}.",
                "",
                "![accuracy against latency](accuracy_latency.png)",
                "",
            ]
        )
    )
