"""What a training run says about itself: the start block it prints, its eval lines, and run.json.

- `run_plan` gathers the facts a trainer prints before step 1 (examples or token budget,
  epochs, steps, batch geometry, warmup, parameters, precision, device, output folder, and what
  the recipe adds: `info`); `format_start_block` lays them out; `plan_warnings` says what in
  them looks wrong (warmup longer than the run).
- `format_eval_line`: one line per evaluation, printed as it happens.
- `run_record`: run.json's history part: every command line that started or resumed the run,
  the git commit of plmkit (and of the working directory) when run from a checkout, and the
  size and SHA-256 of each input file (`fingerprint`), compared on resume.
"""

from __future__ import annotations

import hashlib
import logging
import math
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_HASH_LIMIT = 1 << 30
"""Files larger than this are recorded by size only (hashing them would delay every start)."""
_DIR_FILES = 200
"""Most files of an input folder that are fingerprinted one by one."""


# --------------------------------------------------------------------------- the start block


def run_plan(cfg: Any, *, out_dir: Path, device: str, precision: str, world_size: int, parameters: int,
             trainable: int, start_step: int, stream: Any = None,
             info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The facts of a run before its first step, as plain data (also kept in run.json).

    `cfg` is the TrainConfig; `stream` may describe itself (``describe()`` -> {"examples",
    "tokens_per_example", "what"}); `info` holds what the recipe knows (shown as given).
    """
    per_step = cfg.batch_size * cfg.grad_accum * world_size
    plan: dict[str, Any] = {
        "output": str(out_dir), "device": device, "processes": world_size, "precision": precision,
        "parameters": parameters, "trainable_parameters": trainable,
        "steps": cfg.max_steps, "start_step": start_step,
        "batch": {"per_device": cfg.batch_size, "grad_accum": cfg.grad_accum, "processes": world_size,
                  "examples_per_step": per_step},
        "lr": cfg.lr, "schedule": cfg.schedule, "warmup_steps": cfg.warmup, "warmup_ratio": cfg.warmup_ratio,
        "examples_seen": per_step * cfg.max_steps,
    }
    described = stream.describe() if callable(getattr(stream, "describe", None)) else {}
    examples = described.get("examples")
    if examples:
        plan["examples"] = int(examples)
        plan["epochs"] = per_step * cfg.max_steps / examples
    if described.get("what"):
        plan["data"] = described["what"]
    if described.get("tokens_per_example"):
        plan["token_budget"] = per_step * cfg.max_steps * int(described["tokens_per_example"])
    plan["info"] = {str(k): v for k, v in (info or {}).items() if v is not None}
    return plan


def plan_warnings(plan: Mapping[str, Any]) -> list[str]:
    """What in a plan is likely a mistake."""
    warnings = []
    steps, warmup = plan["steps"], plan["warmup_steps"]
    if warmup > steps:
        warnings.append(f"train.max_steps ({steps}) is below the warmup ({warmup} steps): the learning rate never "
                        f"leaves warmup and never reaches train.lr; lower train.warmup_steps or set "
                        f"train.warmup_ratio (e.g. --set train.warmup_ratio=0.1)")
    return warnings


def format_start_block(plan: Mapping[str, Any]) -> str:
    """The block printed before step 1: one fact per line, aligned."""
    batch = plan["batch"]
    rows: list[tuple[str, str]] = []
    if plan.get("data"):
        rows.append(("data", str(plan["data"])))
    if "examples" in plan:
        rows.append(("examples", f"{plan['examples']:,}"))
        rows.append(("epochs", f"{plan['epochs']:.3g}"))
    if "token_budget" in plan:
        rows.append(("token budget", f"up to {plan['token_budget']:,} tokens ({plan['examples_seen']:,} examples)"))
    steps = f"{plan['steps']:,}"
    if plan["start_step"]:
        steps += f" (resuming after step {plan['start_step']:,})"
    rows.append(("steps", steps))
    rows.append(("batch", f"{batch['per_device']} per device x {batch['grad_accum']} accumulation x "
                          f"{batch['processes']} process{'es' if batch['processes'] > 1 else ''} = "
                          f"{batch['examples_per_step']} examples per step"))
    ratio = f", ratio {plan['warmup_ratio']:g}" if plan.get("warmup_ratio") is not None else ""
    rows.append(("learning rate", f"{plan['lr']:.3g}, {plan['schedule']} schedule, warmup "
                                  f"{plan['warmup_steps']:,} steps{ratio}"))
    trainable = "" if plan["trainable_parameters"] == plan["parameters"] else \
        f" ({plan['trainable_parameters']:,} trainable)"
    rows.append(("parameters", f"{plan['parameters']:,}{trainable}"))
    rows.append(("precision", plan["precision"]))
    rows.append(("device", plan["device"] + (f" x {plan['processes']} processes" if plan["processes"] > 1 else "")))
    rows += [(key, _text(value)) for key, value in plan["info"].items()]
    rows.append(("output", plan["output"]))
    width = max(len(key) for key, _ in rows)
    return "\n".join(["training"] + [f"  {key:<{width}}  {value}" for key, value in rows])


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_text(v)}" for k, v in value.items())
    return str(value)


def format_eval_line(step: int, max_steps: int, metrics: Mapping[str, float]) -> str:
    """"eval step 200/1000: accuracy 0.8125, macro_f1 0.8090"."""
    values = ", ".join(f"{name} {value:.4g}" if math.isfinite(value) else f"{name} {value}"
                       for name, value in metrics.items())
    return f"eval step {step}/{max_steps}: {values}"


# --------------------------------------------------------------------------- run.json's record


def fingerprint(path: str | Path) -> dict[str, Any]:
    """{"path", "size", "sha256"} of a file; a folder: its files' (a shard folder: its meta.json,
    which fingerprints the shards); a missing path: {"path", "missing": True}."""
    path = Path(path)
    if path.is_file():
        size = path.stat().st_size
        return {"path": str(path), "size": size, "sha256": _sha256(path) if size <= _HASH_LIMIT else None}
    if path.is_dir():
        if (path / "meta.json").is_file():  # a shard folder: meta.json holds the counts and fingerprints
            entry = fingerprint(path / "meta.json")
            return {"path": str(path), "size": _folder_size(path), "meta_sha256": entry["sha256"]}
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return {"path": str(path), "size": sum(p.stat().st_size for p in files),
                "files": [fingerprint(p) for p in files[:_DIR_FILES]]}
    return {"path": str(path), "missing": True}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def git_commit(folder: str | Path) -> dict[str, Any] | None:
    """{"commit", "dirty", "root"} of the git checkout holding `folder`; None outside one (or without git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status), "root": git("rev-parse", "--show-toplevel")}


def source_checkouts() -> dict[str, Any]:
    """The commits plmkit runs from: plmkit's own checkout (when it is imported from one) and the
    working directory's (when that is another checkout)."""
    import plmkit

    found: dict[str, Any] = {}
    package = Path(plmkit.__file__).resolve().parent
    own = git_commit(package)
    if own is not None and own.get("root") and (Path(own["root"]) / "src" / "plmkit").resolve() == package:
        found["plmkit"] = own  # plmkit's own source tree, not a checkout that merely holds a venv with it
    here = git_commit(Path.cwd())
    if here is not None and here.get("root") != (own or {}).get("root"):
        found["workdir"] = here
    return found


def command_line() -> list[str]:
    """sys.argv, with the program spelled "plmkit" when it is plmkit's command (the console script,
    or ``python -m plmkit.cli``)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("plmkit", "cli.py", "__main__.py"):
        argv[0] = "plmkit"
    return argv


def run_record(previous: Mapping[str, Any] | None, *, resumed: bool, start_step: int,
               inputs: Sequence[str | Path]) -> dict[str, Any]:
    """run.json's "commands", "git" and "inputs": on a resume the earlier commands are kept, and an
    input whose size or hash changed since the run started is logged."""
    command = {"argv": command_line(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "start_step": start_step}
    earlier = list(previous.get("commands", [])) if resumed and previous else []
    if resumed and previous and not earlier and previous.get("command"):  # a run.json of an earlier version
        earlier = [{"argv": previous["command"], "started_at": previous.get("started_at"),
                    "start_step": previous.get("start_step", 0)}]
    prints = [fingerprint(p) for p in dict.fromkeys(str(p) for p in inputs)]
    if resumed and previous:
        before = {entry.get("path"): entry for entry in previous.get("inputs", []) if isinstance(entry, dict)}
        for entry in prints:
            old = before.get(entry["path"])
            if old is not None and old != entry:
                log.warning("%s changed since this run started (size or content differ from run.json)", entry["path"])
    return {"commands": earlier + [command], "git": source_checkouts(), "inputs": prints}


__all__ = ["fingerprint", "format_eval_line", "format_start_block", "git_commit", "plan_warnings", "run_plan",
           "run_record", "source_checkouts"]
