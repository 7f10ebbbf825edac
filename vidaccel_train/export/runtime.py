"""Running exported programs: load a ``.pte`` through ExecuTorch's runtime, check it against
its export folder's manifest first (:func:`load_verified`), and set the runtime's threads.
``predict``, the demo and the export's own verification load programs only through here."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vidaccel_train.errors import ArtifactError
from vidaccel_train.export.manifest import Manifest
from vidaccel_train.quiet import native_stderr_muted

log = logging.getLogger(__name__)


class ExecuTorchModel:
    """A ``.pte`` loaded through ``executorch.runtime``, called like a module on one tensor:
    ``(1, C, T, H, W)`` float32 -> ``(1, classes)`` logits.

    Raises:
        ArtifactError: the runtime cannot load the program (the message carries its error).
    """

    def __init__(self, path: str | Path):
        from executorch.runtime import Runtime

        self.path = Path(path)
        try:
            # From bytes held here, not from the path: ExecuTorch maps a file's segments and
            # unmaps a delegate's once the backend is set up, and its OpenVINO backend
            # (executorch 1.5.1) keeps reading weights from there: the x86 program crashed in
            # OpenVINO's kernels loaded from its path and runs loaded from bytes.
            self._data = self.path.read_bytes()
            self._program = Runtime.get().load_program(self._data)
            self.method = self._program.load_method("forward")
        except Exception as err:  # the runtime raises RuntimeError/ValueError with an error code
            raise ArtifactError(f"{self.path}: ExecuTorch could not load the program ({err})") from err

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.execute([x.contiguous()])[0]


def set_runtime_threads(threads: int) -> None:
    """Threads for XNNPACK inside the ExecuTorch runtime and for eager PyTorch alike.

    Load programs after this call: running a program loaded before the pool changed can hang.
    """
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

    with native_stderr_muted():
        if _threadpool_get_thread_count() != threads:
            _unsafe_reset_threadpool(threads)
    torch.set_num_threads(threads)


def resolve_artifact(path: str | Path) -> Path:
    """The ``.pte`` that ``path`` names: ``path`` itself, or for an export folder the program its
    manifest prefers (:meth:`Manifest.preferred`: the int8 XNNPACK one, else the first listed).

    Raises:
        ArtifactError: a folder without a readable manifest, or one that lists no program.
    """
    path = Path(path)
    if not path.is_dir():
        return path  # load_verified says what is wrong with a missing or unlisted file
    return path / Manifest.read(path).preferred().file


def load_verified(artifact: str | Path) -> tuple[ExecuTorchModel, Manifest]:
    """The program and its manifest, after checking the file against the manifest's sha256.
    ``artifact``: a ``.pte`` of an export folder, or the folder (its preferred program).

    Raises:
        ArtifactError: the file or its manifest is missing or unreadable, the file is not
            listed, its sha256 is not the manifest's, or the runtime cannot load it.
    """
    artifact = resolve_artifact(artifact)
    if not artifact.is_file():
        raise ArtifactError(f"{artifact} does not exist")
    manifest = Manifest.read(artifact.parent)  # the export folder as written, or an ArtifactError
    manifest.checked_artifact(artifact)
    failed = [f"{t.isa} {t.cpu}" for t in manifest.targets if t.file == artifact.name and not t.passed]
    if failed:  # it runs here as verified; on those CPUs it computes something else
        log.warning(
            "%s failed its check on %s (manifest.json, targets): its logits there are not these; do not ship it",
            artifact.name,
            ", ".join(failed),
        )
    with native_stderr_muted():  # ExecuTorch's CPU probe prints lookups of ARM-only files on load
        program = ExecuTorchModel(artifact)
    return program, manifest
