"""The export folder as one typed record: :class:`Manifest` is what the export writes into
``manifest.json`` and what everything that reads an export folder (``predict``, the demo, the
sweep summary, the report, the target checks) gets back, with every default for manifests of
older exports in one place (:meth:`Manifest.from_json`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vidaccel_train.data.clips import ClipContract, Views
from vidaccel_train.errors import ArtifactError
from vidaccel_train.files import write_atomic

MANIFEST = "manifest.json"
ARTIFACT_FORMAT = "executorch-xnnpack"
# 3: artifacts may include the x86 program (format executorch-openvino) and say how their int8
# came about (quantization); 2: the clip contract in its own vocabulary (eval_short_side,
# train_short_side); 1: short_side.
MANIFEST_VERSION = 3
LAYOUT = "B,C,T,H,W"


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Timing:
    """A batch-1 latency as the manifest records it (ms): the lowest of the round medians, the
    lowest and highest round median, how it was timed, and with how many threads."""

    latency_ms: float | None = None
    latency_range_ms: list[float] | None = None  # exports before it recorded none
    latency_timing: str | None = None
    threads: int | None = None


@dataclass
class ArtifactRecord(Timing):
    """One program of the export and what its verification measured, against the in-framework
    model it was lowered from on every test view. Measurements an older export did not record
    are None."""

    file: str = ""
    precision: str = ""
    sha256: str = ""
    format: str = ARTIFACT_FORMAT
    bytes: int = 0
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None  # share of videos whose top-1 (views averaged) is the same
    clip_agreement: float | None = None  # share of single views whose top-1 is the same
    logit_max_abs_error: float | None = None
    logit_cosine_min: float | None = None
    # Clips ranked differently, and the widest top-1/top-2 logit gap the reference had on any
    # of them: a gap within the logit error means the clip was a near-tie, not a broken program.
    disagreeing_clips: int | None = None
    widest_disagreeing_gap: float | None = None
    # How an int8 program's model came about (the manifest's int8_source for the XNNPACK one).
    quantization: str | None = None


@dataclass
class EagerReference(Timing):
    """The vanilla-PyTorch reference: the train form run eagerly, its accuracy and latency."""

    top1: float | None = None
    top5: float | None = None


@dataclass
class TargetSample:
    """The test clips the export keeps for checks on other CPUs: ``clips_file`` (``.npy``,
    ``(clips, C, T, H, W)`` float32, the programs' input) and ``reference_file`` (``.npz``: per
    program file stem, its logits ``(clips, classes)`` through the export's own runtime on
    ``reference_isa``), with their sha256s, how they were chosen and their labels."""

    clips_file: str
    reference_file: str
    clips: int
    clips_sha256: str
    reference_sha256: str
    reference_isa: str
    selection: str = ""
    labels: list[int] = field(default_factory=list)  # each clip's class index


@dataclass
class TargetRecord:
    """One program checked on one CPU model of a target ISA (``export.target``): the CPU
    features the runtime saw, the instruction families its kernels executed, the runtime and
    emulator, the share of the sample's clips whose top-1 equals the same program's on x86, the largest
    logit difference, the tolerance it was held to, whether it passed, and the wall seconds."""

    file: str
    isa: str
    cpu: str
    features: list[str]
    kernels: list[str]
    runtime: str
    emulator: str | None
    clips: int
    agreement: float
    max_logit_error: float
    tolerance: float
    passed: bool
    seconds: float


def _known(cls, values: dict) -> dict:
    """The entries of ``values`` that are fields of ``cls`` (a later export's extra keys are ignored)."""
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in values.items() if key in names}


@dataclass
class Manifest:
    """An export folder's record: the model, its classes in logit order, the clip contract the
    programs take (``clip``; input ``clip.input_shape`` in :data:`LAYOUT`), how pixels are read
    (``display_aspect``), the test views it was verified on, and each program's record."""

    model: str
    classes: list[str]
    clip: ClipContract
    artifacts: list[ArtifactRecord]
    display_aspect: str = "stored"  # exports before the option read stored pixels
    test_views: Views = Views()  # exports before they recorded the test's: the centre clip, centre crop
    int8_source: str | None = None
    verified_on: dict[str, int] = field(default_factory=dict)  # {"videos": N, "clips": M}
    reference_eager_fp32: EagerReference = field(default_factory=EagerReference)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    target_sample: TargetSample | None = None  # exports before target checks kept none
    targets: list[TargetRecord] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int, int, int]:
        return self.clip.input_shape

    def artifact(self, file: str) -> ArtifactRecord | None:
        """The record of the program named ``file``, if listed."""
        return next((record for record in self.artifacts if record.file == file), None)

    def checked_artifact(self, path: str | Path) -> ArtifactRecord:
        """The record of the program at ``path`` (a file of this manifest's folder), after
        checking that it is there, listed, and the file the manifest lists (its sha256).

        Raises:
            ArtifactError: missing, not listed, or another sha256 (modified or damaged).
        """
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path} does not exist")
        record = self.artifact(path.name)
        if record is None:
            raise ArtifactError(f"{path.name} is not listed in {path.parent / MANIFEST}")
        actual = sha256_of(path)
        if actual != record.sha256:
            raise ArtifactError(
                f"refusing {path}: its sha256 {actual[:16]}… is not the manifest's {record.sha256[:16]}…: it is not "
                "the file the manifest lists (modified or damaged). Export it again (python -m vidaccel_train.export "
                "ckpt_path=...)."
            )
        return record

    def preferred(self) -> ArtifactRecord:
        """The program to serve by default: the int8 XNNPACK one (it runs on every CPU), else
        the first listed.

        Raises:
            ArtifactError: the manifest lists no program.
        """
        if not self.artifacts:
            raise ArtifactError("the manifest lists no program; export the checkpoint again")
        portable = (r for r in self.artifacts if r.precision == "int8" and r.format == ARTIFACT_FORMAT)
        return next(portable, self.artifacts[0])

    def to_json(self) -> dict[str, Any]:
        """The manifest as ``manifest.json`` holds it: the clip contract's fields at the top level."""
        return {
            "manifest_version": MANIFEST_VERSION,
            "model": self.model,
            "classes": list(self.classes),
            "input_shape": list(self.input_shape),
            "layout": LAYOUT,
            **self.clip.as_dict(),
            "display_aspect": self.display_aspect,
            "test_views": asdict(self.test_views),
            "int8_source": self.int8_source,
            "verified_on": dict(self.verified_on),
            "reference_eager_fp32": asdict(self.reference_eager_fp32),
            "stage_seconds": dict(self.stage_seconds),
            "artifacts": [asdict(record) for record in self.artifacts],
            "target_sample": asdict(self.target_sample) if self.target_sample else None,
            "targets": [asdict(record) for record in self.targets],
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> Manifest:
        """A manifest from ``manifest.json``'s contents, of this export or an older one.

        Raises:
            KeyError, TypeError, ValueError: not a manifest the export wrote.
        """
        clip = dict(values)
        if "eval_short_side" not in clip:  # version 1
            clip["eval_short_side"] = clip["short_side"]
        clip.setdefault("train_short_side", None)  # not recorded before version 2
        return cls(
            model=str(values["model"]),
            classes=[str(name) for name in values["classes"]],
            clip=ClipContract.from_dict(clip),
            artifacts=[ArtifactRecord(**_known(ArtifactRecord, record)) for record in values["artifacts"]],
            display_aspect=values.get("display_aspect", "stored"),
            test_views=Views(**values.get("test_views", {})),
            int8_source=values.get("int8_source"),
            verified_on=dict(values.get("verified_on", {})),
            reference_eager_fp32=EagerReference(**_known(EagerReference, values.get("reference_eager_fp32") or {})),
            stage_seconds=dict(values.get("stage_seconds", {})),
            target_sample=(
                TargetSample(**_known(TargetSample, values["target_sample"])) if values.get("target_sample") else None
            ),
            targets=[TargetRecord(**_known(TargetRecord, record)) for record in values.get("targets") or []],
        )

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        """The manifest of the export folder ``folder``.

        Raises:
            ArtifactError: no manifest there, or not one the export wrote.
        """
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise ArtifactError(
                f"{Path(folder)}: no {MANIFEST} in this folder; give an export folder (<run>/export) or a .pte in one"
            )
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ArtifactError(
                f"{path} is not a manifest the export wrote ({type(err).__name__}: {err}); export the checkpoint again"
            ) from err

    def write(self, folder: str | Path) -> Path:
        """``<folder>/manifest.json``, replaced whole (a reader never sees half of it); returns its path."""
        return write_atomic(Path(folder) / MANIFEST, json.dumps(self.to_json(), indent=2).encode())
