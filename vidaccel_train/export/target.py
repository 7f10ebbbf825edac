"""Verification on the target: an export's programs run through ExecuTorch's C++ runtime (the
Module API a phone app links, no Python, no torch) on the CPU they are for, and their logits
compared with the same program's on x86 on a sample of the test clips.

The runner (``runner.cpp``) is built here against the headers and libraries the executorch wheel
ships: natively for ``x86_64``, and cross-compiled for ``aarch64`` and run under qemu-user, one
emulated core per kernel family XNNPACK picks at run time (plain NEON, dot product, i8mm, SVE2,
SME). The emulator is pinned: qemu 10 or newer (qemu 7.2 computes SME instructions wrongly). Each
run also records which of those instruction families it executed, from qemu's log of the code it
translated, so a record says that the core's own kernels ran, not only that the core was asked for.

What it cannot tell: speed (emulation is 50-100x slower than a phone, and not in proportion), or
what a phone-specific build of the runtime (Android's bionic, iOS) does differently.

The tools live in :func:`targets_dir` (``bash scripts/setup.sh`` puts them there, no root needed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from vidaccel_train.errors import ArtifactError, ConfigError, check_number
from vidaccel_train.export.manifest import ARTIFACT_FORMAT, Manifest, TargetRecord, sha256_of

log = logging.getLogger(__name__)

ISAS = ("aarch64",)
# One emulated core per kernel family XNNPACK picks from the CPU's features, oldest first.
DEFAULT_CPUS = {"aarch64": ("cortex-a53", "cortex-a76", "neoverse-v1", "neoverse-n2", "max")}
# qemu-user before 10 (Debian bookworm's 7.2) gets SME wrong: its logits on `max` are garbage.
MIN_QEMU = (10, 0)
# The largest logit difference from the same program on x86 that still passes. Integer kernels agree
# exactly; what differs is float rounding in the (de)quantization around them (about 3e-6 seen).
TOLERANCE = 1e-3
SETUP_HINT = (
    "bash scripts/setup.sh installs them (no root needed); callbacks.export.targets=[] exports without the check"
)
# The runner's time limit: generous for emulated X3D-S clips, short of a run that hangs forever.
RUNNER_SECONDS_PER_CLIP = 120

# Instruction families in qemu's translation log, most specific first: which int8 kernels ran.
KERNEL_FAMILIES = (
    ("sme", ("smopa", "umopa", "sumopa", "usmopa", "smstart")),
    ("i8mm", ("smmla", "ummla", "usmmla")),
    ("dotprod", ("sdot", "udot", "usdot", "sudot")),
)
_MNEMONIC = re.compile(r"^0x[0-9a-f]+:\s+[0-9a-f]{8}\s+(\w+)", re.MULTILINE)


class TargetVerificationError(ArtifactError):
    """A program whose logits on a target CPU are further from its logits on x86 than the
    tolerance; the message names the CPU models and how far apart they were."""


def targets_dir() -> Path:
    """Where the target tools live: ``$VIDACCEL_TARGETS_DIR``, else ``<venv>/share/vidaccel_train/targets``."""
    return Path(os.environ.get("VIDACCEL_TARGETS_DIR") or Path(sys.prefix) / "share" / "vidaccel_train" / "targets")


def host_isa() -> str:
    return os.uname().machine


@dataclass(frozen=True)
class Toolchain:
    """What builds and runs the program runner for one ISA.

    Attributes:
        isa: ``x86_64`` (native) or ``aarch64``.
        compiler: the C++ compiler (a cross compiler for a foreign ISA).
        executorch: the executorch wheel's folder for that ISA (``include/``, ``lib/``).
        executorch_version: its version (``1.5.1``).
        emulator: ``qemu-aarch64`` for a foreign ISA, None natively.
        emulator_version: its ``--version`` line ("" natively).
        sysroot: the foreign ISA's C library folder for the emulator (``QEMU_LD_PREFIX``).
        link_sysroot: the root the cross compiler's files were unpacked into, for the linker
            (``--sysroot``: the C library's link scripts name its files by absolute path).
    """

    isa: str
    compiler: Path
    executorch: Path
    executorch_version: str
    emulator: Path | None = None
    emulator_version: str = ""
    sysroot: Path | None = None
    link_sysroot: Path | None = None

    @property
    def native(self) -> bool:
        return self.emulator is None

    @classmethod
    def host(cls) -> Toolchain:
        """The host's: its ``g++`` and the installed executorch package.

        Raises:
            ConfigError: no C++ compiler on the PATH.
        """
        compiler = shutil.which("g++") or shutil.which("c++")
        if compiler is None:
            raise ConfigError("building the program runner needs a C++ compiler (g++) on the PATH")
        from importlib.util import find_spec

        package = Path(list(find_spec("executorch").submodule_search_locations)[0])
        return cls(host_isa(), Path(compiler), package, _installed_executorch())

    @classmethod
    def find(cls, isa: str) -> Toolchain:
        """The installed tools for ``isa`` (``aarch64``), checked: the cross compiler, the emulator
        (qemu 10 or newer), the C library for it and the executorch wheel of the installed version.

        Raises:
            ConfigError: an unknown ISA, or a tool missing or of the wrong version (the message
                says which and how to install it).
        """
        if isa == host_isa():
            return cls.host()
        if isa not in ISAS:
            raise ConfigError(f"unknown target ISA {isa!r}: choose from {list(ISAS)}")
        root = targets_dir() / isa
        compilers = sorted((root / "gcc/usr/bin").glob(f"{isa}-linux-gnu-g++*"))
        emulator = root / f"qemu-{isa}"
        executorch = root / "executorch"
        sysroot = root / f"gcc/usr/{isa}-linux-gnu"
        missing = [
            name
            for name, present in [
                ("the cross compiler", compilers),
                (f"qemu-{isa}", emulator.is_file()),
                (f"the {isa} C library", (sysroot / "lib").is_dir()),
                (f"the executorch wheel for {isa}", (executorch / "lib/libexecutorch.so").is_file()),
            ]
            if not present
        ]
        if missing:
            raise ConfigError(f"verifying on {isa} needs {', '.join(missing)} in {root}: {SETUP_HINT}")
        wanted = _installed_executorch()
        version = (executorch / "VERSION").read_text().strip() if (executorch / "VERSION").is_file() else "unknown"
        if version != wanted:
            raise ConfigError(
                f"the {isa} runtime in {executorch} is executorch {version}, the installed one {wanted}: {SETUP_HINT}"
            )
        emulator_version = check_emulator(emulator)
        return cls(isa, compilers[-1], executorch, version, emulator, emulator_version, sysroot, root / "gcc")


def _installed_executorch() -> str:
    """The installed executorch's version without its local label (``1.5.1``)."""
    return metadata.version("executorch").split("+")[0]


def check_emulator(emulator: Path) -> str:
    """``emulator``'s version line, after checking it is qemu 10 or newer.

    Raises:
        ConfigError: it does not run, or it is older.
    """
    try:
        first = subprocess.run([emulator, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError as err:
        raise ConfigError(f"{emulator} does not run ({err}): {SETUP_HINT}") from None
    line = first.splitlines()[0].strip() if first.strip() else ""
    found = re.search(r"version (\d+)\.(\d+)", line)
    if found is None or tuple(map(int, found.groups())) < MIN_QEMU:
        raise ConfigError(
            f"{emulator} is {line or 'not qemu'}: verification needs qemu {'.'.join(map(str, MIN_QEMU))} or newer "
            f"(older ones compute SME instructions wrongly): {SETUP_HINT}"
        )
    return line


def runner_source() -> Path:
    return Path(__file__).with_name("runner.cpp")


def build_runner(toolchain: Toolchain) -> Path:
    """The runner built for ``toolchain`` (once: kept in :func:`targets_dir` by its inputs' hash).

    Raises:
        ArtifactError: the compiler failed (the message carries its last lines).
    """
    source = runner_source()
    key = hashlib.sha256(
        b"\0".join([source.read_bytes(), str(toolchain.compiler).encode(), toolchain.executorch_version.encode()])
    ).hexdigest()[:16]
    runner = targets_dir() / toolchain.isa / f"runner-{key}" / "runner"
    if runner.is_file():
        return runner
    runner.parent.mkdir(parents=True, exist_ok=True)
    lib = toolchain.executorch / "lib"
    include = toolchain.executorch / "include"
    staging = runner.with_name(f".runner-{os.getpid()}")
    command = [
        str(toolchain.compiler),
        "-std=c++17",
        "-O2",
        "-Wno-deprecated-declarations",
        # What the wheel's executorch-config.cmake gives a consumer (EXECUTORCH_COMPILE_DEFINITIONS).
        "-DC10_USING_CUSTOM_GENERATED_MACROS",
        "-DET_EVENT_TRACER_ENABLED",
        f'-DVIDACCEL_EXECUTORCH_VERSION="{toolchain.executorch_version}"',
        f"-I{include}",
        f"-I{include}/executorch/runtime/core/portable_type/c10",
        str(source),
        "-o",
        str(staging),
        f"-L{lib}",
        # The kernels and the XNNPACK backend register themselves when loaded: keep them linked.
        "-Wl,--no-as-needed",
        "-lexecutorch",
        "-lexecutorch_kernels_optimized",
        "-lexecutorch_kernels_quantized",
        "-lexecutorch_backend_xnnpack",
        "-lexecutorch_threadpool",
        "-Wl,--as-needed",
        f"-Wl,-rpath,{lib}",
        *([f"--sysroot={toolchain.link_sysroot}"] if toolchain.link_sysroot else []),
    ]
    log.info("Building the %s program runner (%s)", toolchain.isa, Path(toolchain.compiler).name)
    try:
        env = dict(os.environ)
        if toolchain.link_sysroot:  # the unpacked binutils' own libraries (libbfd, libopcodes for arm64)
            host_libraries = toolchain.link_sysroot / "usr/lib" / f"{host_isa()}-linux-gnu"
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(host_libraries), env.get("LD_LIBRARY_PATH")]))
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        if result.returncode != 0:
            errors = [line.strip() for line in result.stderr.splitlines() if "error" in line.lower()]
            raise ArtifactError(
                f"building the {toolchain.isa} runner with {toolchain.compiler} failed: "
                + " / ".join(errors[:3] or result.stderr.strip().splitlines()[-3:])
            )
        os.replace(staging, runner)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ArtifactError(f"building the {toolchain.isa} runner in {runner.parent} failed: {err}") from None
    finally:
        staging.unlink(missing_ok=True)
    return runner


@dataclass(frozen=True)
class RunnerResult:
    """What one run of the runner gave: ``logits`` ``(clips, classes)``, the CPU features the
    process saw, the instruction families it executed (aarch64 under the emulator: ``sme``,
    ``i8mm``, ``dotprod``, or ``neon`` for none of those), the runtime and the wall seconds."""

    logits: np.ndarray
    features: list[str]
    kernels: list[str]
    runtime: str
    seconds: float


def run_program(
    program: Path, clips: Path, toolchain: Toolchain, cpu: str | None = None, threads: int = 1
) -> RunnerResult:
    """Run ``program`` on every clip of ``clips`` (a ``.npy`` of ``(N, C, T, H, W)`` float32)
    with the runner of ``toolchain``, under its emulator as ``cpu`` for a foreign ISA.

    Raises:
        ArtifactError: the runner failed (its error, and the CPU model, in the message).
    """
    runner = build_runner(toolchain)
    count = int(np.load(clips, mmap_mode="r", allow_pickle=False).shape[0])
    where = f"{toolchain.isa}" + (f" ({cpu})" if cpu else "")
    with tempfile.TemporaryDirectory(prefix="vidaccel-target-") as scratch:
        out = Path(scratch) / "logits.npy"
        trace = Path(scratch) / "translated.log"
        command = [str(runner), str(program), str(clips), str(out), str(threads)]
        env = dict(os.environ)
        if toolchain.emulator is not None:
            # -d in_asm: the emulator logs each block of guest code it translates (once each).
            command = [str(toolchain.emulator), "-d", "in_asm", "-D", str(trace), *command]
            env.update(QEMU_LD_PREFIX=str(toolchain.sysroot), QEMU_CPU=cpu or "max")
        started = time.perf_counter()
        limit = 60 + RUNNER_SECONDS_PER_CLIP * count
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=limit)
        except subprocess.TimeoutExpired:
            raise ArtifactError(f"the runner on {where} did not finish {count} clips in {limit} s") from None
        except OSError as err:
            raise ArtifactError(f"the runner on {where} could not start: {err}") from None
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "cpuinfo_utils" not in line and line.strip()]
            raise ArtifactError(
                f"the runner failed on {where} with exit code {result.returncode}: {' / '.join(errors[-3:])}"
            )
        try:
            summary = json.loads(result.stdout.strip().splitlines()[-1])
            features = list(summary["features"])
            logits = np.load(out, allow_pickle=False)
        except (ValueError, KeyError, IndexError, OSError) as err:
            raise ArtifactError(f"the runner on {where} ended without its results ({err}): {result.stdout[-300:]}")
        kernels = kernel_families(trace.read_text(errors="replace")) if trace.is_file() else []
        return RunnerResult(
            logits=logits,
            features=features,
            kernels=kernels,
            runtime=summary["runtime"],
            seconds=round(seconds, 2),
        )


def kernel_families(translated: str) -> list[str]:
    """The instruction families of :data:`KERNEL_FAMILIES` in a qemu ``in_asm`` log, most
    specific first; ``["neon"]`` when none of them ran (plain Advanced SIMD kernels), and
    ``["unknown"]`` for a log without disassembly (a qemu built without its disassembler)."""
    seen = set(_MNEMONIC.findall(translated))
    if not seen:
        return ["unknown"]
    found = [family for family, mnemonics in KERNEL_FAMILIES if seen.intersection(mnemonics)]
    return found or ["neon"]


# --- the export folder's sample and its verification --------------------------------------

TARGET_CLIPS = "target_clips.npy"
TARGET_REFERENCE = "target_reference.npz"


def compare(logits: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(share of clips whose top-1 equals the reference's, largest absolute logit difference)."""
    if logits.shape != reference.shape:
        raise ArtifactError(f"the target gave logits of shape {logits.shape}, the reference {reference.shape}")
    agreement = float((logits.argmax(-1) == reference.argmax(-1)).mean())
    return agreement, float(np.abs(logits - reference).max())


def verify_on_target(
    program: Path,
    clips: Path,
    reference: np.ndarray,
    isa: str,
    cpus: list[str] | tuple[str, ...] | None = None,
    tolerance: float = TOLERANCE,
    jobs: int | None = None,
) -> list[TargetRecord]:
    """``program`` run on ``isa`` for each CPU model of ``cpus`` (default :data:`DEFAULT_CPUS`),
    on the clips of ``clips``, against the same program's logits on x86 ``reference`` ``(N, classes)``.
    CPU models run side by side, ``jobs`` at a time (default: the host's cores, at most 4).

    Returns one record per CPU model, ``passed`` when its largest logit difference is within
    ``tolerance``; says nothing about a failure (:func:`check_records` does).

    Raises:
        ConfigError: the tools for ``isa`` are missing (see :meth:`Toolchain.find`).
        ArtifactError: the runner failed on a CPU model.
    """
    toolchain = Toolchain.find(isa)
    # On a host of the ISA itself the runner runs natively, once: its own CPU, not emulated models.
    cpus = ["native"] if toolchain.native else list(cpus or DEFAULT_CPUS[isa])
    build_runner(toolchain)  # once, before the runs start side by side
    count = int(np.load(clips, mmap_mode="r", allow_pickle=False).shape[0])

    def one(cpu: str) -> TargetRecord:
        result = run_program(program, clips, toolchain, cpu=None if toolchain.native else cpu)
        agreement, error = compare(result.logits, reference)
        return TargetRecord(
            file=program.name,
            isa=toolchain.isa,
            cpu=cpu,
            features=result.features,
            kernels=result.kernels,
            runtime=result.runtime,
            emulator=toolchain.emulator_version or None,
            clips=count,
            agreement=agreement,
            max_logit_error=error,
            tolerance=tolerance,
            passed=error <= tolerance,
            seconds=result.seconds,
        )

    with ThreadPoolExecutor(max_workers=jobs or min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, cpus))


def check_records(records: list[TargetRecord], reference: str = "x86") -> None:
    """Raises :class:`TargetVerificationError` naming each program and CPU model that failed,
    and how far its logits were from those on ``reference`` (where the export ran)."""
    failed = [r for r in records if not r.passed]
    if failed:
        raise TargetVerificationError(
            "; ".join(
                f"{file} does not compute on {failed[0].isa} what it computes on {reference}: "
                + ", ".join(
                    f"on {r.cpu} its logits are up to {r.max_logit_error:.3g} apart (tolerance {r.tolerance:g}), "
                    f"top-1 the same on {r.agreement:.0%} of {r.clips} clips"
                    for r in failed
                    if r.file == file
                )
                for file in dict.fromkeys(r.file for r in failed)
            )
            + ". Do not ship it: report the program and the CPU model (see docs/quantization-and-export.md"
            "#verified-on-the-target)"
        )


def write_sample(folder: Path, clips: np.ndarray, references: dict[str, np.ndarray]) -> tuple[str, str]:
    """``target_clips.npy`` (``(N, C, T, H, W)`` float32) and ``target_reference.npz`` (one
    ``(N, classes)`` array per program file) in ``folder``; returns their sha256s."""
    clips_path = folder / TARGET_CLIPS
    with open(clips_path, "wb") as stream:
        np.save(stream, np.ascontiguousarray(clips, dtype=np.float32), allow_pickle=False)
    reference_path = folder / TARGET_REFERENCE
    with open(reference_path, "wb") as stream:
        np.savez(stream, **{name: np.asarray(v, dtype=np.float32) for name, v in references.items()})
    return sha256_of(clips_path), sha256_of(reference_path)


def verify_folder(
    folder: str | Path,
    isa: str = "aarch64",
    cpus: list[str] | tuple[str, ...] | None = None,
    clips: int | None = None,
    tolerance: float = TOLERANCE,
    files: list[str] | None = None,
) -> tuple[Manifest, list[TargetRecord]]:
    """Verify an export folder's programs (``files``, default all) on ``isa``: each CPU model of
    ``cpus`` on the first ``clips`` clips of its sample (default all). Records the results in
    its manifest (``targets``, replacing earlier ones of the same program, ISA and CPU) and
    report, and returns the manifest and this check's records; a failed check is recorded, then
    raised.

    Raises:
        ArtifactError: no readable manifest, a program or the sample missing or not the file the
            manifest lists, or the runner failing.
        ConfigError: the tools for ``isa`` are missing, or ``clips`` is out of range.
        TargetVerificationError: a CPU model's logits beyond ``tolerance`` (after recording it).
    """
    from vidaccel_train.export.report import write_report

    folder = Path(folder)
    tolerance = check_number("--tolerance (callbacks.export.target_tolerance)", tolerance)
    manifest = Manifest.read(folder)
    sample = manifest.target_sample
    if sample is None:
        raise ArtifactError(
            f"{folder}: this export has no clip sample for target checks (exported before it was written): "
            "export the checkpoint again"
        )
    for name, expected in [(sample.clips_file, sample.clips_sha256), (sample.reference_file, sample.reference_sha256)]:
        path = folder / name
        if not path.is_file() or sha256_of(path) != expected:
            raise ArtifactError(f"{path} is missing or not the file the manifest lists: export the checkpoint again")
    with np.load(folder / sample.reference_file, allow_pickle=False) as stored:
        references = {name: stored[name] for name in stored.files}
    # The XNNPACK programs: the x86 program (OpenVINO) runs on x86 alone.
    chosen = files or [a.file for a in manifest.artifacts if a.format == ARTIFACT_FORMAT]
    for file in chosen:  # every program checked before any runs
        manifest.checked_artifact(folder / file)
        if manifest.artifact(file).format != ARTIFACT_FORMAT:
            raise ArtifactError(
                f"{file} is the x86 program ({manifest.artifact(file).format}): it runs on x86-64 alone"
            )
        if Path(file).stem not in references:
            raise ArtifactError(f"{folder / sample.reference_file} has no x86 logits for {file}")
    clips_file = folder / sample.clips_file
    with tempfile.TemporaryDirectory(prefix="vidaccel-target-") as scratch:
        if clips is not None:
            if not 1 <= clips <= sample.clips:
                raise ConfigError(f"--clips must be between 1 and {sample.clips} (the sample's clips), got {clips}")
            subset = Path(scratch) / TARGET_CLIPS
            np.save(subset, np.load(clips_file, allow_pickle=False)[:clips], allow_pickle=False)
            clips_file = subset
        records = []
        for file in chosen:
            program = folder / file
            reference = references[Path(file).stem][: clips or sample.clips]
            log.info("Verifying %s on %s: %s", file, isa, ", ".join(cpus or DEFAULT_CPUS.get(isa, ())))
            records += verify_on_target(program, clips_file, reference, isa, cpus, tolerance)
    kept = [t for t in manifest.targets if (t.file, t.isa, t.cpu) not in {(r.file, r.isa, r.cpu) for r in records}]
    manifest.targets = kept + records
    write_report(folder, manifest)
    manifest.write(folder)
    for r in records:
        log.info(
            "Target %s %s %s: %s, kernels %s, top-1 agreement %.0f%% of %d clips, max logit error %.3g, %.1f s",
            r.file,
            r.isa,
            r.cpu,
            "passed" if r.passed else "FAILED",
            "+".join(r.kernels),
            r.agreement * 100,
            r.clips,
            r.max_logit_error,
            r.seconds,
        )
    check_records(records, sample.reference_isa.split(",")[0])
    return manifest, records
