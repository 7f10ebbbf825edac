"""Keep third-party notices that ask nothing of the user off the console (every entry point).

Each filter names one known message; anything else still shows. ``VIDACCEL_VERBOSE=1`` keeps
them all, for debugging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

# (category, message regex) of warnings about other libraries' internals.
_WARNINGS = (
    (FutureWarning, r".*torch\.jit\.script. is deprecated"),  # PyTorchVideo scripts a helper at import
    (Warning, r".*isinstance\(treespec, LeafSpec\). is deprecated"),  # Lightning's pytree helper on new torch
)
# Lightning warnings about resuming that do not apply when our run directory has no checkpoint yet
# (OnExceptionCheckpoint makes Lightning look for one even on a fresh start).
FRESH_START_WARNINGS = (
    r".*\(ckpt_path=None\). was called without a model",
    r".*\(ckpt_path=\"last\"\) is set, but there is no last checkpoint",
)


def _verbose() -> bool:
    return os.environ.get("VIDACCEL_VERBOSE") == "1"


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def silence_third_party_noise() -> None:
    if _verbose():
        return
    for category, message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # Lightning's advertisement for its hosted logger, on every run.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropMessages("litlogger"))
    # torchao registers an enum that newer torch supports natively; torch warns at each import.
    logging.getLogger("torch.utils._pytree").addFilter(_DropMessages("register_constant()"))


@contextlib.contextmanager
def native_stderr_muted():
    """Mute what native code writes to stderr meanwhile (ExecuTorch's cpuinfo probe prints its
    lookups of ARM-only files on every machine)."""
    if _verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
