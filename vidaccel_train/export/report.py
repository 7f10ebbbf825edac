"""The export's human-readable report: ``report.md`` and ``accuracy_latency.png`` from a manifest."""

from __future__ import annotations

from pathlib import Path

from vidaccel_train.export.manifest import ARTIFACT_FORMAT, LAYOUT, ArtifactRecord, Manifest, Timing
from vidaccel_train.files import write_atomic


def _range(record: Timing) -> str:
    """``low-high`` ms over the timing rounds (exports made before it recorded none)."""
    return "{:.2f}-{:.2f}".format(*record.latency_range_ms) if record.latency_range_ms else "n/a"


def _label(record: ArtifactRecord) -> str:
    """``ExecuTorch int8`` for an XNNPACK program (any CPU), ``... x86 (OpenVINO)`` for the x86 one."""
    return f"ExecuTorch {record.precision}" + (" x86 (OpenVINO)" if record.format != ARTIFACT_FORMAT else "")


def write_report(folder: Path, manifest: Manifest) -> None:
    """``report.md`` and ``accuracy_latency.png`` in ``folder``, from the export's manifest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = manifest.reference_eager_fp32
    points = [("PyTorch eager fp32", reference.latency_ms, reference.top1)] + [
        (_label(a), a.latency_ms, a.top1) for a in manifest.artifacts
    ]
    spreads = [_range(reference)] + [_range(a) for a in manifest.artifacts]
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, latency, top1 in points:
        axes.scatter(latency, top1 * 100, s=60, label=label)
    axes.set_xscale("log")
    axes.set_xlabel(f"latency, batch 1, {reference.threads} threads (ms, log scale)")
    axes.set_ylabel("test top-1 (%)")
    axes.set_title(f"{manifest.model}: accuracy against latency")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(folder / "accuracy_latency.png", dpi=120)
    plt.close(figure)

    rows = [
        f"| {label} | {top1 * 100:.1f} | {latency:.2f} | {spread} | {reference.latency_ms / latency:.1f}x |"
        for (label, latency, top1), spread in zip(points, spreads)
    ]
    timings = "; ".join(
        f"{label}: {record.latency_timing}"
        for label, record in [("eager", reference)] + [(_label(a), a) for a in manifest.artifacts]
        if record.latency_timing
    )
    details = [
        f"| {a.file} | {a.precision} | {a.bytes / 1e6:.2f} MB | {a.agreement * 100:.1f}% | "
        f"{a.clip_agreement * 100:.1f}% | {a.logit_max_abs_error:.3g} | {a.logit_cosine_min:.5f} | "
        f"{a.disagreeing_clips} (widest gap {a.widest_disagreeing_gap:.3g}) | `{a.sha256[:16]}…` |"
        for a in manifest.artifacts
    ]
    x86 = [a for a in manifest.artifacts if a.format != ARTIFACT_FORMAT]
    x86_note = (
        [
            f"{', '.join(a.file for a in x86)}: the x86 program, for x86-64 CPUs only (ExecuTorch's OpenVINO "
            f"backend; {x86[0].quantization}); timed in a process of its own held to {reference.threads} cores, "
            "since OpenVINO takes a thread per core it may run on. The XNNPACK programs are the ones for "
            "phones and ARM boards: an x86 figure says nothing about a phone.",
            "",
        ]
        if x86
        else []
    )
    verified = manifest.verified_on
    clip = manifest.clip
    targets = [
        f"| {t.file} | {t.isa} {t.cpu} | {'+'.join(t.kernels) or 'n/a'} | {', '.join(t.features) or 'none'} | "
        f"{t.clips} | {t.agreement * 100:.0f}% | {t.max_logit_error:.3g} | {'passed' if t.passed else '**FAILED**'} "
        f"| {t.seconds:.1f} s |"
        for t in manifest.targets
    ]
    emulators = sorted({t.emulator for t in manifest.targets if t.emulator})
    target_section = (
        [
            "## Verified on the target",
            "",
            f"Each program through ExecuTorch's C++ runtime (Module API, XNNPACK; {manifest.targets[0].runtime}) on the target ISA, "
            f"against the same program's logits on x86, on {manifest.target_sample.clips} test clips "
            f"({manifest.target_sample.selection}); passed: the largest logit difference is within "
            f"{manifest.targets[0].tolerance:g}. Kernels: the instruction families the run executed "
            "(sme, i8mm, dotprod; neon: none of them). "
            + (f"Emulated by {', '.join(emulators)}; " if emulators else "")
            + "the seconds are the emulator's, not a phone's.",
            "",
            "| program | target | kernels | CPU features | clips | top-1 agreement | max logit error | check | seconds |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *targets,
            "",
        ]
        if manifest.targets and manifest.target_sample
        else []
    )
    stages = ", ".join(f"{name.replace('_', ' ')} {seconds:.1f} s" for name, seconds in manifest.stage_seconds.items())
    write_atomic(
        folder / "report.md",
        "\n".join(
            [
                f"# Export report: {manifest.model}",
                "",
                f"Input {list(manifest.input_shape)} ({LAYOUT}), {clip.num_frames} frames "
                f"every {clip.sampling_rate} at {clip.target_fps:g} fps"
                + (f"; int8 from {manifest.int8_source}." if manifest.int8_source else "."),
                "",
                "| model | test top-1 (%) | latency (ms) | range over rounds (ms) | speed-up vs eager |",
                "| --- | --- | --- | --- | --- |",
                *rows,
                "",
                f"Latency at batch 1 with {reference.threads} threads, the models timed in turns in one process; "
                f"each figure is the lowest round median, the range spans the round medians ({timings}). "
                "Eager is the train form on channels-last clips, as training runs it; for other runtimes "
                "(torch.compile, ONNX Runtime, OpenVINO), each in its own process, see scripts/bench_latency.py.",
                "",
                *x86_note,
                f"Each artifact against the in-framework model it was lowered from, on all {verified['clips']} test "
                f"views ({verified['videos']} videos); a disagreeing clip whose reference top-1/top-2 logit gap is "
                "within the logit error was a near-tie.",
                "",
                "| artifact | precision | size | video agreement | clip agreement | max logit error | min cosine "
                "| disagreeing clips | sha256 |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                *details,
                "",
                *target_section,
                f"Export stages: {stages}.",
                "",
                "![accuracy against latency](accuracy_latency.png)",
                "",
            ]
        ).encode(),
    )
