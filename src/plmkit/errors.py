"""The errors plmkit raises on purpose, one hierarchy for the whole package.

Every error a user can cause or meet derives from `PlmkitError` and carries an exit code for
the command line (`plmkit.cli` turns them into one line on stderr and that code). Errors about
user input are also `ValueError`s, so ``except ValueError`` keeps working for library users.

=========  =====================================================================
exit code  meaning
=========  =====================================================================
0          success
1          an unexpected error (a bug: the traceback is shown)
2          bad input: a file, a field, a flag or a config value (`UserError`)
3          data on disk does not match what was recorded (`IntegrityError`)
4          the system refused: no space, permission, read-only folder (`ResourceError`)
5          training stopped on non-finite values (`NonFiniteError`)
6          the output folder is in use by another plmkit run (`BusyError`)
130/143    interrupted by SIGINT / SIGTERM (`Interrupted`; training first writes a checkpoint)
=========  =====================================================================

`plmkit.cli` prints one line for these (add ``--debug``, or set ``PLMKIT_DEBUG=1``, for the
traceback). It also turns a `FileNotFoundError` into exit code 2 and any other `OSError` (no
space, permission, a file where a folder is expected) into exit code 4. Every other exception
is a bug in plmkit: its traceback is shown and the exit code is 1.
"""

from __future__ import annotations

from pathlib import Path


class PlmkitError(Exception):
    """Base of every error plmkit raises on purpose."""

    exit_code = 1


class UserError(PlmkitError, ValueError):
    """Bad input from the user: a flag, a config value, a file's content or layout."""

    exit_code = 2


class DataError(UserError):
    """A data file cannot be read as promised; `path` and `line` (1-based, when known) say where.

    The message starts with ``path:line:`` (or ``path:``), the form editors and terminals link.
    """

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
        self.reason = message


class IntegrityError(PlmkitError):
    """Data on disk differs from what plmkit recorded when it wrote it (size, count, fingerprint)."""

    exit_code = 3


class ResourceError(PlmkitError, OSError):
    """The operating system refused: no space left, no permission, a read-only folder."""

    exit_code = 4


class NonFiniteError(PlmkitError, RuntimeError):
    """Training met NaN/inf losses or gradients more often than train.max_nonfinite_skips allows."""

    exit_code = 5


class BusyError(PlmkitError):
    """Another plmkit process holds the lock of the output folder."""

    exit_code = 6


class Interrupted(PlmkitError):
    """Stopped by SIGINT or SIGTERM; the exit code is 128 + the signal number (130, 143)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


__all__ = ["BusyError", "DataError", "IntegrityError", "Interrupted", "NonFiniteError", "PlmkitError",
           "ResourceError", "UserError"]
