"""Output places that cannot be written, for tests of what a command does with them: a read-only
folder and a disk that is full. Both work as root (where ``chmod`` stops nothing): a tmpfs mounted
read-only or of a few kilobytes where the test may mount, else a ``chmod 555`` folder (for a
non-root user) and ``RLIMIT_FSIZE`` in the child (its writes fail with ``EFBIG``)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _mount_tmpfs(path: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return result.returncode == 0


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def readonly_folder(path: Path) -> Iterator[Path]:
    """``path`` (made, empty) as a folder nothing can be written into, for the block's length."""
    path.mkdir(parents=True, exist_ok=True)
    if _mount_tmpfs(path, "ro,size=64k"):
        try:
            yield path
        finally:
            _unmount(path)
        return
    if os.geteuid() == 0:
        raise RuntimeError("running as root without the right to mount: cannot make a read-only folder")
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


@contextmanager
def full_disk(path: Path, size_kib: int = 64) -> Iterator[Callable[[], None] | None]:
    """``path`` (made, empty) on a disk with ``size_kib`` KiB free. Yields None when a small
    tmpfs is mounted there; else a ``preexec_fn`` for :func:`subprocess.run` that limits the
    child's file sizes to that many bytes (writes then fail with ``EFBIG`` instead of ``ENOSPC``)."""
    path.mkdir(parents=True, exist_ok=True)
    if _mount_tmpfs(path, f"size={size_kib}k"):
        try:
            yield None
        finally:
            _unmount(path)
        return

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_kib * 1024, size_kib * 1024))

    yield limit
