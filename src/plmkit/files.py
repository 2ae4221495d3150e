"""Files plmkit writes: each one complete or absent.

`atomic_write` writes to a hidden temporary file beside the target and renames it into
place, so a reader (or a run killed half-way) never sees half a file, and the target is
replaced only once the new content is whole.

Running out of space is reported as a `ResourceError` that says "no space left on device at
PATH" (`no_space_as_error`), and writers that know their size check first (`require_space`).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from plmkit.errors import ResourceError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


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


def free_bytes(path: str | Path) -> int:
    """Bytes available to this user on the file system of `path` (or of its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def no_space(path: str | Path, what: str, needed: int | None = None, free: int | None = None) -> ResourceError:
    """The error for a full disk: "no space left on device at PATH: WHAT ..."."""
    sizes = ""
    if needed is not None:
        sizes = f" (needs about {_mb(needed)}" + (f", {_mb(free)} free)" if free is not None else ")")
    error = ResourceError(f"no space left on device at {path}: {what}{sizes}")
    error.errno = errno.ENOSPC  # (no .filename: OSError would then print "[Errno 28] None: PATH")
    return error


def is_no_space(error: BaseException) -> bool:
    """Whether `error` says the disk (or quota) is full; libraries written in Rust say it in words."""
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
        return True
    text = str(error)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def require_space(path: str | Path, needed: int, what: str) -> None:
    """ResourceError (before anything is written) when `path` has less than `needed` bytes free."""
    free = free_bytes(path)
    if free < needed:
        raise no_space(path, what, needed, free)


@contextmanager
def no_space_as_error(path: str | Path, what: str) -> Iterator[None]:
    """Turn a full-disk error raised inside the block into a ResourceError naming `path` and `what`."""
    try:
        yield
    except ResourceError:
        raise
    except Exception as e:
        if is_no_space(e):
            raise no_space(path, what) from e
        raise


__all__ = ["atomic_write", "atomic_write_text", "free_bytes", "is_no_space", "no_space", "no_space_as_error",
           "require_space", "temp_path"]
