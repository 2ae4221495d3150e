"""Files plmkit writes: each one complete or absent.

`atomic_write` writes to a hidden temporary file beside the target and renames it into
place, so a reader (or a run killed half-way) never sees half a file, and the target is
replaced only once the new content is whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def temp_path(path: str | Path) -> Path:
    """A hidden temporary name beside `path`, unique to this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | Path, write: Callable[[Path], None], *, fsync: bool = False) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to `path`.

    On any error the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write UTF-8 `text` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"), fsync=fsync)


__all__ = ["atomic_write", "atomic_write_text", "temp_path"]
