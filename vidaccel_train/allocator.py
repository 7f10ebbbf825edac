"""Keep freed tensor memory in the process for the next step (glibc's malloc).

glibc gives every block of 32 MB or more its own mapping and unmaps it on free, so each step's
large activations are faulted in page by page again (what that costs a QAT step:
docs/benchmarks.md, "The figures behind the code's choices"). Kept memory is reused by the next
step; the process's resident size stays at its peak instead of falling between steps.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# The user's own malloc settings win.
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory(up_to_bytes: int = 1 << 30) -> bool:
    """Serve blocks up to ``up_to_bytes`` from the heap and keep up to that much free memory
    there; returns whether the setting took (glibc on Linux, no malloc settings of the user's)."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, another allocator)
        return False
    applied = bool(mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(up_to_bytes))) and bool(
        mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(up_to_bytes))
    )
    log.debug("malloc keeps freed blocks up to %d bytes: %s", up_to_bytes, applied)
    return applied
