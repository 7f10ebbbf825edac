"""The export folder's contract with what reads it (``predict``, the sweep summary): the
manifest's file name, the artifacts' format and how their integrity is checked."""

from __future__ import annotations

import hashlib
from pathlib import Path

MANIFEST = "manifest.json"
ARTIFACT_FORMAT = "executorch-xnnpack"


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
