"""Output folders: plmkit replaces only what it made, and one run writes a folder at a time.

Every folder plmkit creates as an output (a shard folder, a tokenizer, a training run, the
demo) carries a marker file, ``.plmkit-output.json``, naming its kind and the entries plmkit
writes there (``owns``, as glob patterns). The rules that follow from it:

- A folder is *claimed* for output when it is new, empty, or marked as the same kind (or is
  an unmarked folder an earlier plmkit version wrote, recognised by the kind's signature).
  Any other folder is refused with an error that names what is in it.
- A folder is *replaced* (``--overwrite``, a re-run of the demo or of ``tokenizer train``)
  only when every entry in it is one plmkit owns there, looking into owned sub-folders that
  carry their own marker. A file the user put there stops the replacement and is named.
- Inputs inside the output folder are refused: replacing the folder would delete them.
- A claim holds a lock, ``.NAME.plmkit.lock`` beside the folder, so two runs never write the
  same folder. The lock is an ``flock`` (the kernel drops it when the process dies) on a file
  that records PID, host and start time: a lock left by a dead process on this host is taken
  over with a warning; a lock recorded by another host is reported, never broken.
- Temporary folders of runs that were killed (``.NAME.tmp-HOST-PID``) are removed when their
  process is gone, and reported when it is alive or on another host.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from plmkit.errors import BusyError, UserError
from plmkit.files import atomic_write_text

log = logging.getLogger(__name__)

MARKER = ".plmkit-output.json"
FORMAT = "plmkit-output"
_LOCK_SUFFIX = ".plmkit.lock"
_TEMP_TAGS = (".tmp-", ".trash-")


@dataclass(frozen=True)
class OutputKind:
    """A kind of output folder: what it is called and which entries plmkit writes in it."""

    name: str
    description: str
    owns: tuple[str, ...]
    """Glob patterns of the entries plmkit writes at the top of such a folder."""
    legacy: Callable[[Path], bool] | None = None
    """Recognises an unmarked folder that an earlier plmkit wrote (adopted when all its entries are owned)."""
    keeps: tuple[str, ...] = ()
    """Owned entries that writers of this kind never replace, so inputs may come from inside them
    (a fine-tuning run starts from the model its task-adaptive pretraining left in adapt/)."""


def _is_legacy_shards(path: Path) -> bool:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == "plmkit-shards"


def _is_legacy_run(path: Path) -> bool:
    return (path / "run.json").is_file() or (path / "finetune.json").is_file()


SHARDS = OutputKind("shards", "a shard folder (plmkit prepare)", ("meta.json", "tokenizer", "train", "eval"),
                    legacy=_is_legacy_shards)
TOKENIZER = OutputKind("tokenizer", "a tokenizer folder (plmkit tokenizer train)",
                       ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
                        "special_tokens_map.json"))
RUN = OutputKind("run", "a training run folder (plmkit pretrain / finetune)",
                 ("run.json", "run.json.tmp", "metrics.jsonl", "metrics.jsonl.tmp", "loss.png", "tensorboard",
                  "checkpoint-*", "final", "best", "best.tmp", "finetune.json", "finetune.json.tmp",
                  "dev_eval.json", "dev_eval.json.tmp", "dev_eval_confusion.png", "dev_predictions.jsonl",
                  "dev_predictions.jsonl.tmp", "run_summary.json", "run_summary.json.tmp", "adapt"),
                 legacy=_is_legacy_run, keeps=("adapt",))
DEMO = OutputKind("demo", "the demo's folder (plmkit demo)",
                  ("tok-wordpiece", "tok-bpe", "shards-bert", "shards-gpt", "bert-embeddings", "bert", "gpt",
                   "sst2-train-sentences.txt", "sst2-*-of-labels", "sst2-*-of-labels-seed*",
                   "sst2-pretrained", "sst2-from-scratch", "summary.json", "report.html"))
EXPLAIN = OutputKind("explain", "an explanation folder (plmkit explain)", ("attribution.html", "attention-layer*.png"))
KINDS = {k.name: k for k in (SHARDS, TOKENIZER, RUN, DEMO, EXPLAIN)}

State = Literal["new", "empty", "ours"]


# --------------------------------------------------------------------------- markers and ownership


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of `folder`, or None when it has none (or an unreadable one)."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def write_marker(folder: Path, kind: OutputKind) -> None:
    """Mark `folder` as a plmkit output of `kind` (keeping its creation time when re-marked)."""
    old = read_marker(folder) or {}
    info = {"format": FORMAT, "kind": kind.name, "owns": list(kind.owns),
            "created": old.get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")), "by": _version()}
    atomic_write_text(folder / MARKER, json.dumps(info, indent=1) + "\n")


def _owned_patterns(marker: dict[str, Any] | None, kind: OutputKind | None) -> tuple[str, ...]:
    patterns = tuple(marker.get("owns", ())) if marker else ()
    known = KINDS.get(str(marker.get("kind"))) if marker else kind
    return patterns + (known.owns if known else ())


def is_plmkit_temp(name: str) -> bool:
    """Names plmkit gives to transient entries: locks, temp and trash folders, atomic-write temps."""
    return name.startswith(".") and (name.endswith(_LOCK_SUFFIX) or any(t in name for t in _TEMP_TAGS))


def foreign_entries(folder: Path, kind: OutputKind | None = None) -> list[Path]:
    """Entries of `folder` plmkit did not write: not owned by its marker (or by `kind` when it
    has none), looking into owned sub-folders that carry a marker of their own."""
    owns = _owned_patterns(read_marker(folder), kind)
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name == MARKER or is_plmkit_temp(entry.name):
            continue
        if not any(fnmatch.fnmatchcase(entry.name, p) for p in owns):
            found.append(entry)
        elif entry.is_dir() and not entry.is_symlink() and read_marker(entry) is not None:
            found += foreign_entries(entry)
    return found


def _listing(entries: Sequence[Path], root: Path, limit: int = 6) -> str:
    names = [str(e.relative_to(root)) + ("/" if e.is_dir() else "") for e in entries[:limit]]
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(names) + more


def inspect_output(path: str | Path, kind: OutputKind) -> State:
    """Whether `path` may receive output of `kind`: "new" (absent), "empty", or "ours" (a folder
    of that kind plmkit wrote). Anything else raises UserError naming what is there."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return "new"
    if not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder; choose a folder for {kind.description}")
    entries = [e for e in path.iterdir() if not is_plmkit_temp(e.name)]
    if not entries:
        return "empty"
    marker = read_marker(path)
    if marker is not None:
        if marker.get("kind") != kind.name:
            other = KINDS.get(str(marker.get("kind")))
            what = other.description if other else f"a plmkit {marker.get('kind')} folder"
            raise UserError(f"{path}: is {what}, not {kind.description}; choose another output folder")
        return "ours"
    if kind.legacy is not None and kind.legacy(path) and not foreign_entries(path, kind):
        return "ours"
    foreign = foreign_entries(path, kind)
    raise UserError(f"{path}: holds files plmkit did not write ({_listing(foreign, path)}); "
                    f"plmkit writes {kind.description} only into a new or empty folder or one it made itself, "
                    "so nothing of yours is replaced. Choose another output folder")


def refuse_inputs_inside(path: Path, inputs: Iterable[str | Path], keeps: Sequence[str] = ()) -> None:
    """UserError when an input lies inside (or is) the output folder `path`, unless it is inside one
    of the entries `keeps` (which the output's writers never replace)."""
    out = path.resolve()
    kept = [out / name for name in keeps]
    for item in inputs:
        p = Path(item).resolve()
        if any(k == p or k in p.parents for k in kept):
            continue
        if p == out or out in p.parents:
            raise UserError(f"input {item} is inside the output folder {path}: writing the output there could "
                            "replace it; choose an output folder that holds none of the inputs")


def check_replaceable(path: Path, kind: OutputKind) -> None:
    """UserError naming the entries that stop `path` from being replaced (see the module docstring)."""
    foreign = foreign_entries(path, kind)
    if foreign:
        raise UserError(f"{path}: will not replace this folder, it holds files plmkit did not write "
                        f"({_listing(foreign, path)}); move them away or choose another output folder")


def remove_entry(entry: Path) -> None:
    """Delete a file, a link (not its target) or a folder tree."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink(missing_ok=True)


# --------------------------------------------------------------------------- temp folders


def temp_dir_name(target: Path, tag: str = "tmp") -> str:
    """``.NAME.tmp-HOST-PID``: a transient sibling of `target` that names its owner."""
    return f".{target.name}.{tag}-{_host()}-{os.getpid()}"


def clean_stale_temps(target: Path) -> list[Path]:
    """Remove ``.NAME.tmp-*`` / ``.NAME.trash-*`` siblings of `target` whose process is gone;
    report (log) those of a live process or another host. Returns the removed paths."""
    parent = target.parent
    if not parent.is_dir():
        return []
    removed = []
    for tag in _TEMP_TAGS:
        for entry in parent.glob(f".{_glob_escape(target.name)}{tag}*"):
            owner = entry.name[len(f".{target.name}{tag}"):]
            host, _, pid = owner.rpartition("-")
            if host in ("", _host()) and pid.isdigit() and not _alive(int(pid), None):
                remove_entry(entry)
                removed.append(entry)
            else:
                log.warning("%s: left by %s; not removed (remove it yourself if that run is over)", entry,
                            f"process {pid} on host {host}" if host else "another process")
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


# --------------------------------------------------------------------------- the lock


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process `pid` (boot id + clock ticks), to tell a reused PID; Linux only."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else f"{boot}:{fields[19]}"  # a zombie counts as gone


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    now = _start_time(pid)
    if Path("/proc/self/stat").exists() and now is None:
        return False  # gone or a zombie
    return start is None or now is None or now == start


def make_parents(path: Path) -> None:
    """Create the folders above `path`; NotADirectoryError naming a file that stands in the way."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(ancestor))
    path.parent.mkdir(parents=True, exist_ok=True)


def lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}{_LOCK_SUFFIX}"


_HELD: dict[str, list[Any]] = {}  # lock file -> [fd, count]: a process may claim a folder it holds again


class FolderLock:
    """An exclusive lock on output folder `target` (the file ``.NAME.plmkit.lock`` beside it)."""

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target).resolve()  # one lock whichever path (link) names the folder
        self.path = lock_path(self.target)
        self.held = False

    def acquire(self) -> FolderLock:
        key = str(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            self.held = True
            return self
        make_parents(self.path)
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if self._try_flock(fd) and self._same_file(fd):
                    self._take(fd)
                    _HELD[key] = [fd, 1]
                    self.held = True
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the file was replaced while we opened it: try again
        raise BusyError(f"{self.target}: could not lock {self.path} (it keeps changing); is another run starting?")

    def _try_flock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"{self.target}: in use by another plmkit run ({_describe(_read(fd))}); wait for it "
                            "to finish or choose another output folder") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            log.warning("%s: this file system has no flock; relying on the PID recorded in the lock", self.path)
        return True

    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _take(self, fd: int) -> None:
        holder = _read(fd)
        if holder:
            if holder.get("host") != _host():
                raise BusyError(f"{self.target}: locked by a run on another host ({_describe(holder)}); if no run "
                                f"is active there, delete {self.path}")
            if _alive(int(holder.get("pid", -1)), holder.get("start")) and holder.get("pid") != os.getpid():
                raise BusyError(f"{self.target}: in use by another plmkit run ({_describe(holder)})")
            log.warning("%s: taking over the lock of a run that is gone (%s)", self.target, _describe(holder))
        me = {"pid": os.getpid(), "host": _host(), "start": _start_time(os.getpid()),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        entry = _HELD.get(str(self.path))
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _HELD[str(self.path)]
        fd = entry[0]
        try:
            if self._same_file(fd):
                self.path.unlink(missing_ok=True)  # before unlocking: a waiter then finds no stale file
        finally:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that has not written its details yet"
    return (f"PID {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')}"
            + (f": {holder['command']}" if holder.get("command") else ""))


# --------------------------------------------------------------------------- claims


class OutputClaim:
    """A locked output folder of one kind; see `claim_output`."""

    def __init__(self, path: Path, kind: OutputKind, state: State, lock: FolderLock) -> None:
        self.path, self.kind, self.state, self.lock = path, kind, state, lock

    def ensure(self) -> Path:
        """Create the folder when needed and mark it (for writers that fill it in place)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if read_marker(self.path) is None:
            write_marker(self.path, self.kind)
        return self.path

    def clear(self) -> Path:
        """Empty the folder of what plmkit wrote there (refusing if it holds anything else) and mark it."""
        if self.path.exists():
            check_replaceable(self.path, self.kind)
            for entry in self.path.iterdir():
                if not is_plmkit_temp(entry.name):
                    remove_entry(entry)
        return self.ensure()

    def temp_dir(self) -> Path:
        """A fresh sibling temp folder to build the output in; `publish` swaps it in."""
        tmp = self.path.with_name(temp_dir_name(self.path))
        if tmp.exists():
            remove_entry(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def publish(self, tmp: Path) -> Path:
        """Mark `tmp` and put it in place of the folder (refusing if the folder now holds anything
        plmkit did not write); the old folder is removed only once the new one is in place."""
        write_marker(tmp, self.kind)
        trash = self.path.with_name(temp_dir_name(self.path, "trash"))
        if self.path.exists():
            check_replaceable(self.path, self.kind)
            if trash.exists():
                remove_entry(trash)
            os.replace(self.path, trash)
        os.replace(tmp, self.path)
        if trash.exists():
            remove_entry(trash)
        return self.path

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> OutputClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_output(path: str | Path, kind: OutputKind, inputs: Iterable[str | Path] = (),
                 replace: bool = False) -> OutputClaim:
    """Lock `path` for output of `kind` and check that it may hold it (see `inspect_output`).

    inputs: files or folders the command reads; one inside `path` is refused.
    replace: the caller will replace the folder: check now that it holds nothing but
        plmkit's own entries, so a long build does not end in that error.
    Also removes temp folders of `path` left by dead processes. Release the claim (or use
    it as a context manager) when done; the lock also dies with the process.
    """
    path = Path(path).absolute()
    lock = FolderLock(path).acquire()
    try:
        refuse_inputs_inside(path, inputs, kind.keeps)
        state = inspect_output(path, kind)
        if replace and state == "ours":
            check_replaceable(path, kind)
        clean_stale_temps(path)
    except BaseException:
        lock.release()
        raise
    return OutputClaim(path, kind, state, lock)


def check_output_file(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """UserError when output file `path` is one of the `inputs` or an existing folder. (An existing
    file the user names as an output is replaced, as the commands' help says.)"""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; name the output file to write")
    for item in inputs:
        if Path(item).exists() and Path(item).resolve() == path.resolve():
            raise UserError(f"{path}: is also an input of this command; writing the output there would replace it")
    return path


def check_not_busy(path: str | Path) -> None:
    """BusyError when another live process holds the lock of `path` (a read-only look)."""
    target = Path(path).resolve()
    lock = lock_path(target)
    if str(lock) in _HELD or not lock.is_file():
        return
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise BusyError(f"{target}: in use by another plmkit run ({_describe(_read(fd))})") from None
    except OSError:
        pass
    finally:
        os.close(fd)


def _version() -> str:
    try:
        import importlib.metadata

        return f"plmkit {importlib.metadata.version('plmkit')}"
    except Exception:  # noqa: BLE001 - not installed (a source checkout)
        return "plmkit"


__all__ = ["DEMO", "EXPLAIN", "KINDS", "MARKER", "RUN", "SHARDS", "TOKENIZER", "FolderLock", "OutputClaim", "OutputKind",
           "check_not_busy", "check_output_file", "check_replaceable", "claim_output", "clean_stale_temps", "foreign_entries",
           "inspect_output", "read_marker", "refuse_inputs_inside", "write_marker"]
