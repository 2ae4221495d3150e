"""The C heap allocator under CPU training: what is in use, and glibc's settings.

A CPU training step allocates and frees the same large tensors (activations, logits, gradients)
every step. glibc's malloc serves blocks above its mmap threshold (dynamic, at most 32 MiB) with
fresh mmap() calls and gives them back on free, so every step page-faults them in again, and it
trims the top of the heap back to the OS. ``retain`` (`retain_freed_memory`) turns both off
with ``mallopt`` for this process: large blocks come from the heap and freed memory stays there
for the next step (the process's resident size stays at its peak). tcmalloc or jemalloc keep
freed memory by design; they are loaded only before the process starts (``LD_PRELOAD``, see
`preload_hint`), and `retain_freed_memory` then does nothing.

None of this changes a computed value: only where memory comes from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Literal

MallocSetting = Literal["default", "retain"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_NEVER = 2**31 - 1
"""Largest trim threshold mallopt takes (an int): the heap is never trimmed in practice."""
_PRELOADED = ("tcmalloc", "jemalloc", "mimalloc")
_TCMALLOC = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def allocator_in_use() -> str:
    """"tcmalloc", "jemalloc" or "mimalloc" when preloaded (LD_PRELOAD), "glibc" on glibc Linux, else "other"."""
    preload = os.environ.get("LD_PRELOAD", "")
    for name in _PRELOADED:
        if name in preload:
            return name
    return "glibc" if _glibc() is not None else "other"


def retain_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse (no mmap for large blocks, no trimming).

    Returns True when the settings took effect; False (and nothing changed) under another
    allocator or C library.
    """
    libc = _glibc()
    if libc is None or allocator_in_use() != "glibc":
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER))


def apply_malloc_setting(setting: MallocSetting) -> str:
    """Apply TrainConfig.malloc; returns a line for the log saying what is in effect."""
    if setting not in ("default", "retain"):
        raise ValueError(f"train.malloc: expected 'default' or 'retain', got {setting!r}")
    current = allocator_in_use()
    if setting == "default":
        return f"allocator: {current}"
    if retain_freed_memory():
        return "allocator: glibc, retaining freed memory (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=max)"
    return f"allocator: {current} (train.malloc=retain applies to glibc only; nothing changed)"


def tcmalloc_path() -> Path | None:
    """An installed tcmalloc shared library (e.g. Debian's libtcmalloc-minimal4), or None."""
    for directory in _LIB_DIRS:
        for name in _TCMALLOC:
            path = Path(directory) / name
            if path.is_file():
                return path
    found = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    return Path(found) if found and Path(found).is_absolute() else None


def preload_hint() -> str:
    """How to run under tcmalloc on this machine (or how to install it)."""
    path = tcmalloc_path()
    if path is None:
        return "tcmalloc is not installed (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)"
    return f"LD_PRELOAD={path} plmkit ..."


def _glibc() -> ctypes.CDLL | None:
    if os.name != "posix":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc
