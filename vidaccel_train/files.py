"""Writing files and folders so that a kill never leaves half of one: on the ground floor (it
imports nothing of the project), for checkpoints, exported programs, generated datasets and
re-encoded copies alike.

Whatever is being written goes to ``.<name>.tmp-<pid>`` beside its target and is renamed onto
it when complete (a rename within one folder is atomic on POSIX file systems); a failure removes
it. A run that was killed leaves such a name behind: :func:`remove_leftovers` clears those of
other processes.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vidaccel_train.errors import OutputError

STAGING_INFIX = ".tmp-"


def staging_path(target: str | Path) -> Path:
    """``.<name>.tmp-<pid>`` beside ``target``."""
    target = Path(target)
    return target.with_name(f".{target.name}{STAGING_INFIX}{os.getpid()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A path to write ``target`` at (a file, or a folder the block makes); it takes
    ``target``'s place when the block ends, and is removed if the block raises.

    A folder replaces an existing ``target`` folder whole: the old one is moved aside first, so a
    reader sees the old folder or the new one, never a mix. Files are flushed to disk (fsync)
    before the rename.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(target)
    if staging.is_dir() and not staging.is_symlink():  # this process's own leftover; a file is truncated
        shutil.rmtree(staging)
    try:
        yield staging
        if staging.is_file():
            with open(staging, "rb+") as stream:
                os.fsync(stream.fileno())
        if staging.is_dir() and target.is_dir():
            retired = target.with_name(f".{target.name}.old{STAGING_INFIX}{os.getpid()}")
            _remove(retired)
            os.replace(target, retired)
            os.replace(staging, target)
            _remove(retired)
        else:
            os.replace(staging, target)
    finally:
        _remove(staging)


def write_atomic(path: str | Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_path` (mode 0644); returns ``path``."""
    with atomic_path(path) as staging:
        staging.write_bytes(data)
    return Path(path)


def remove_leftovers(folder: str | Path, name: str = "*") -> list[Path]:
    """Remove what killed writers of other processes left in ``folder`` (their names match
    ``name``); returns what was removed."""
    removed = []
    patterns = {f".{name}{STAGING_INFIX}*", f".{name}.old{STAGING_INFIX}*"}  # staged and moved-aside copies
    for stale in sorted({p for pattern in patterns for p in Path(folder).glob(pattern)}):
        if stale.name.rsplit(STAGING_INFIX, 1)[-1] != str(os.getpid()):
            _remove(stale)
            removed.append(stale)
    return removed


def check_writable(path: str | Path, what: str = "output", *, folder: bool = True) -> Path:
    """Check, before any work, that ``path`` can be written: a folder (``folder=True``) that
    exists or can be made, or a file whose folder can take a new file. Folders it makes stay.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: naming ``what``, the path and the reason (read-only, not a folder, ...).
    """
    path = Path(path)
    target = path if folder else path.parent
    if not folder and path.is_dir():
        raise OutputError(f"{what} {path} is a folder, not a file")
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".write-check{STAGING_INFIX}{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        if not folder and path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "file is read-only", str(path))
    except OSError as err:
        reason = err.strerror or str(err)
        raise OutputError(f"cannot write {what} {path}: {reason}") from None
    return path


@contextmanager
def output_errors(what: str) -> Iterator[None]:
    """Turn an :class:`OSError` raised while writing ``what`` (a full disk, a folder gone
    read-only) into one :class:`~vidaccel_train.errors.OutputError`; combine with
    :func:`atomic_path` so nothing half-written stays."""
    try:
        yield
    except OSError as err:
        if isinstance(err, (FileNotFoundError, IsADirectoryError)):  # a caller's mistake, not the disk's
            raise
        where = f" {err.filename}" if err.filename else ""
        raise OutputError(f"cannot write {what}{where}: {err.strerror or err}") from None
