"""Training checkpoints that are complete or absent, and exact resume.

A checkpoint is a folder ``checkpoint-{step:08d}`` holding

    model.safetensors                      weights (tied tensors stored once, aliases in metadata)
    optimizer.json + optimizer.safetensors optimizer state: tensors flattened, the rest as JSON
      or, for FSDP2 runs, instead of those two:
    sharded/                               weights and optimizer state as torch.distributed.checkpoint
                                           shards: each rank writes its own, nothing is gathered
    trainer_state.json                     step, counters, batch geometry, the training config
    rng-rank{r}.json/.safetensors          python, numpy, torch CPU (and CUDA) RNG states per rank
    stream-rank{r}.json/.safetensors       the data stream's state_dict() per rank
    COMPLETE                               written last, with each file's size and CRC-32:
                                           a folder without it does not count

It is written to a hidden temp folder, every file fsynced, then renamed into place, so a
crash leaves either the whole checkpoint or none. A sharded checkpoint loads into any number of
processes (FSDP2 reshards; a single process loads full tensors), and so does a full one: a resume
may regroup the ranks as long as the global micro-batch (batch_size x world_size) and grad_accum
stay the same, which keeps every optimizer step's examples (the data streams count positions in
global batches; a rank that did not exist reads rank 0's stream state and is seeded afresh). Nothing is ever unpickled: loading reads
only safetensors and JSON, so a checkpoint someone hands you cannot run code.

Before writing, the free space is compared with the size of the newest checkpoint; when it is
short, checkpoints that keep_last would prune after this one are pruned first (never the
newest), and if it is still short the write is refused with a `ResourceError` ("no space
left on device at PATH") that leaves every existing checkpoint loadable. A full disk during
the write gives the same error and removes the partial folder. On resume every file is checked
against COMPLETE; a damaged checkpoint is named and the previous one is used, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from plmkit.config import ConfigError
from plmkit.errors import IntegrityError, ResourceError
from plmkit.files import free_bytes, no_space, no_space_as_error
from plmkit.outputs import RUN, check_not_busy, inspect_output
from plmkit.train.distributed import DistEnv, all_reduce_sum, barrier, full_state_dict, is_fsdp, unwrap

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d{8})$")
_TMP_PREFIX = ".tmp-checkpoint-"
_TRASH_PREFIX = ".trash-checkpoint-"
RESUME_FIELDS = ("batch_size", "grad_accum", "world_size")
"""Fields that fix the data order: grad_accum and batch_size x world_size must match between a
checkpoint and the run resuming it (the ranks may be regrouped)."""
SHARDED_DIR = "sharded"
"""The torch.distributed.checkpoint folder of an FSDP2 checkpoint."""


# --------------------------------------------------------------------------- tree codec


def encode_tree(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tuples, scalars, tensors, numpy arrays) into
    JSON-able data and a flat dict of tensors, so it can be stored without pickle."""
    tensors: dict[str, torch.Tensor] = {}
    return _encode(obj, tensors, {}, "state"), tensors


def _encode(obj: Any, tensors: dict[str, torch.Tensor], seen: dict[int, str], where: str) -> Any:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        kind = "__tensor__" if isinstance(obj, torch.Tensor) else "__ndarray__"
        if id(obj) not in seen:
            t = obj.detach().cpu() if isinstance(obj, torch.Tensor) else torch.from_numpy(np.array(obj))
            seen[id(obj)] = key = str(len(tensors))
            tensors[key] = t.contiguous().clone()
        return {kind: seen[id(obj)]}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, seen, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, seen, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, seen, f"{where}.{k}") for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, seen, where), _encode(v, tensors, seen, f"{where}[{k!r}]")]
                              for k, v in obj.items()]}
    raise TypeError(
        f"{where}: cannot store a {type(obj).__name__} in a checkpoint "
        "(allowed: dict, list, tuple, str, int, float, bool, None, torch.Tensor, numpy array)"
    )


def decode_tree(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `encode_tree`."""
    if isinstance(data, list):
        return [decode_tree(v, tensors) for v in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1:
        (key, value), = data.items()
        if key == "__tensor__":
            return tensors[value]
        if key == "__ndarray__":
            return tensors[value].numpy()
        if key == "__tuple__":
            return tuple(decode_tree(v, tensors) for v in value)
        if key == "__items__":
            return {_hashable(decode_tree(k, tensors)): decode_tree(v, tensors) for k, v in value}
    return {k: decode_tree(v, tensors) for k, v in data.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def write_tree(directory: Path, name: str, obj: Any) -> list[Path]:
    """Store `obj` as directory/name.json (+ name.safetensors when it holds tensors)."""
    data, tensors = encode_tree(obj)
    paths = [directory / f"{name}.json"]
    paths[0].write_text(json.dumps(data), encoding="utf-8")
    if tensors:
        paths.append(directory / f"{name}.safetensors")
        save_file(tensors, str(paths[1]))
    return paths


def read_tree(directory: Path, name: str) -> Any:
    """Load what `write_tree` stored (JSON and safetensors only; nothing is unpickled)."""
    path = directory / f"{name}.json"
    if not path.is_file():
        raise IntegrityError(f"checkpoint {directory} is missing {path.name}")
    data = _read_json(path)
    tensor_path = directory / f"{name}.safetensors"
    tensors = _read_safetensors(tensor_path, copy=True)[0] if tensor_path.is_file() else {}
    try:
        return decode_tree(data, tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(f"{path}: does not match {tensor_path.name} ({e!r})") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise IntegrityError(f"{path}: damaged, not readable JSON ({e})") from None


def _read_safetensors(path: Path, copy: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file. safetensors maps the file into memory: `copy`
    the tensors that outlive the call (optimizer and stream state), or the file stays pinned on
    disk, and pruning its checkpoint later would not give the space back."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return ({k: f.get_tensor(k).clone() if copy else f.get_tensor(k) for k in f.keys()},
                    dict(f.metadata() or {}))
    except (SafetensorError, OSError, ValueError) as e:
        raise IntegrityError(f"{path}: damaged, not a readable safetensors file ({e})") from None


# --------------------------------------------------------------------------- RNG


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The RNG states of python, numpy, torch CPU and (when initialized) every CUDA device."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda[torch.cuda.current_device() % len(cuda)])


# --------------------------------------------------------------------------- finding checkpoints


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def is_complete(path: Path) -> bool:
    """A checkpoint counts only when its folder has the right name and the completion marker."""
    return path.is_dir() and _NAME.match(path.name) is not None and (path / MARKER).is_file()


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `out_dir`, oldest step first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if is_complete(p)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `out_dir`, or None."""
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def resolve_resume(out_dir: Path, resume: str | Path | None) -> Path | None:
    """Which checkpoint to resume from (the newest; see `resume_candidates`), after checking
    that `out_dir` may hold a training run and is not in use by another process.

    None: a fresh run (an error when `out_dir` already holds checkpoints, so nothing is
    overwritten by accident); "auto": the newest complete one in `out_dir`, or a fresh run
    when there is none; a path: that checkpoint, or the newest one inside that run folder.
    """
    found = resume_candidates(out_dir, resume)
    return found[0] if found else None


def resume_candidates(out_dir: Path, resume: str | Path | None) -> list[Path]:
    """The checkpoints a resume may use, best first: for "auto" or a run folder, every complete
    one, newest first (an older one is the fallback when a newer one is damaged); for a
    checkpoint path, just that one; for a fresh run, none."""
    inspect_output(out_dir, RUN)  # a folder of someone else's files: refused before anything is written
    if os.environ.get("RANK", "0") == "0":
        check_not_busy(out_dir)
    if resume is None:
        existing = latest_checkpoint(out_dir)
        if existing is not None:
            raise ValueError(
                f"{out_dir} already holds checkpoints (newest {existing.name}); "
                "continue that run with --resume auto, or choose another output folder (-o)"
            )
        return []
    if resume == "auto":
        return list_checkpoints(out_dir)[::-1]
    path = Path(resume)
    if is_complete(path):
        return [path]
    if path.is_dir() and _NAME.match(path.name) is None:
        found = list_checkpoints(path)[::-1]
        if found:
            return found
    if path.is_dir():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    raise FileNotFoundError(f"checkpoint not found: {path}")


def verify_checkpoint(path: Path) -> None:
    """IntegrityError naming the first file of checkpoint `path` whose size or CRC-32 differs from
    what its COMPLETE marker recorded (checkpoints written before the marker held them pass)."""
    recorded = _read_json(path / MARKER)
    files = recorded.get("files") if isinstance(recorded, dict) else None
    for name, want in (files or {}).items():
        file = path / name
        if not file.is_file():
            raise IntegrityError(f"{file}: missing from the checkpoint")
        size = file.stat().st_size
        if size != want["size"]:
            raise IntegrityError(f"{file}: damaged ({size} bytes, {want['size']} written)")
        if _crc32(file) != want["crc32"]:
            raise IntegrityError(f"{file}: damaged (its CRC-32 differs from the one written)")


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            crc = zlib.crc32(block, crc)
    return crc


# --------------------------------------------------------------------------- writing


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dedupe(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one copy of tensors that share memory (tied weights); aliases map dropped -> kept."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    owners: dict[tuple, str] = {}
    for name, t in weights.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in owners:
            aliases[name] = owners[key]
            continue
        owners[key] = name
        kept[name] = t.detach().cpu().contiguous()
    return kept, aliases


def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer state keyed by parameter names instead of positions (a collective under FSDP)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(unwrap(model), optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names = _position_names(model, optimizer)
    state = optimizer.state_dict()
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[i] for i in g["params"]]}
              for g in state["param_groups"]]
    return {"state": {names[i]: s for i, s in state["state"].items()}, "param_groups": groups}


def _position_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter name of each optimizer position (positions count across groups, in order)."""
    by_id = {id(p): n for n, p in unwrap(model).named_parameters()}
    names = [by_id.get(id(p)) for g in optimizer.param_groups for p in g["params"]]
    if None in names:
        raise ValueError("the optimizer holds parameters that are not in the model")
    return names  # type: ignore[return-value]


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stream: Any,
    trainer_state: dict[str, Any],
    env: DistEnv = DistEnv(),
    keep_last: int = 0,
) -> Path:
    """Write ``out_dir/checkpoint-{step:08d}`` atomically; every rank calls this.

    Rank 0 writes the weights, the optimizer and `trainer_state` (JSON-able); each rank
    writes its RNG states and ``stream.state_dict()``. Afterwards only the newest
    `keep_last` complete checkpoints are kept (0 keeps all). Returns the final folder.
    Raises ResourceError when the disk is (or would be) full; existing checkpoints stay loadable.
    """
    out = Path(out_dir)
    tmp = out / f"{_TMP_PREFIX}{step:08d}"
    final = out / checkpoint_name(step)
    sharded = is_fsdp(model)
    weights = {} if sharded else full_state_dict(model)
    size = sum(p.numel() * p.element_size() for p in unwrap(model).parameters()) if sharded else \
        sum(t.numel() * t.element_size() for t in weights.values())
    together(env, lambda: _make_room(out, tmp, step, size, keep_last) if env.is_main else None)
    optim_state = None if sharded else _optimizer_state(model, optimizer)

    def write() -> None:
        with no_space_as_error(tmp, f"the checkpoint of step {step} was not written; the previous checkpoint "
                                    "is intact. Free some space, then continue with --resume auto"):
            written: list[Path] = []
            if sharded:  # a collective: every rank writes its shards, fsynced by the writer
                _save_sharded(tmp / SHARDED_DIR, model, optimizer)
            if env.is_main and not sharded:
                kept, aliases = _dedupe(weights)
                save_file(kept, str(tmp / "model.safetensors"),
                          metadata={"format": "pt", "aliases": json.dumps(aliases)})
                written.append(tmp / "model.safetensors")
                written += write_tree(tmp, "optimizer", optim_state)
            if env.is_main:
                state = dict(trainer_state, step=step)
                (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
                written.append(tmp / "trainer_state.json")
            written += write_tree(tmp, f"rng-rank{env.rank}", capture_rng_state())
            written += write_tree(tmp, f"stream-rank{env.rank}", stream.state_dict())
            for path in written:
                _fsync(path)

    try:
        together(env, write)
        together(env, lambda: _publish(tmp, final, step) if env.is_main else None)
    except ResourceError:
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk: give the space back
        raise
    if env.is_main and keep_last > 0:
        prune_checkpoints(out, keep_last)
    barrier(env)
    return final


def together(env: DistEnv, action: Any) -> None:
    """Run `action` on every rank; if it fails on any, every rank raises (none waits forever)."""
    error: BaseException | None = None
    try:
        action()
    except Exception as e:  # noqa: BLE001 - re-raised below, after the ranks agree
        error = e
    if env.distributed:
        failed = torch.tensor([0.0 if error is None else 1.0], device=env.device)
        if all_reduce_sum(failed, env).item() and error is None:
            raise RuntimeError("another rank failed while writing a checkpoint (see its error)")
    if error is not None:
        raise error


def _make_room(out: Path, tmp: Path, step: int, weight_bytes: int, keep_last: int) -> None:
    """Create the empty temp folder once the space for a checkpoint is known to be there.

    The size is that of the newest checkpoint (or three times the weights: weights plus AdamW's
    two moments). When space is short, checkpoints that pruning would delete after this write
    go first, the newest always staying; if it is still short, ResourceError before writing.
    """
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    existing = list_checkpoints(out)
    if existing:
        needed = sum(f.stat().st_size for f in existing[-1].iterdir() if f.is_file())
    else:
        needed = 3 * weight_bytes
    needed = int(needed * 1.05) + (1 << 20)
    doomed = existing[:-(keep_last - 1)] if keep_last > 1 else []
    while free_bytes(out) < needed and doomed:
        victim = doomed.pop(0)
        log.warning("%s: little space left; pruning %s before writing step %d", out, victim.name, step)
        _remove(victim)
    free = free_bytes(out)
    if free < needed:
        newest = f"; the newest checkpoint {existing[-1].name} is intact" if existing else ""
        raise no_space(out, f"the checkpoint of step {step} was not written{newest}. Free some space, then "
                            "continue with --resume auto", needed, free)
    tmp.mkdir()


def _publish(tmp: Path, final: Path, step: int) -> None:
    """Mark `tmp` complete (recording each file's size and CRC-32) and rename it to `final`
    (replacing an older folder of that step)."""
    files = {f.relative_to(tmp).as_posix(): {"size": f.stat().st_size, "crc32": _crc32(f)}
             for f in sorted(tmp.rglob("*")) if f.is_file()}
    marker = tmp / MARKER
    marker.write_text(json.dumps({"step": step, "files": files}, indent=1) + "\n", encoding="utf-8")
    _fsync(marker)
    _fsync(tmp)
    trash = final.parent / f"{_TRASH_PREFIX}{final.name}"
    if final.exists():
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
    os.replace(tmp, final)
    _fsync(final.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _remove(path: Path) -> None:
    """Delete a checkpoint so that an interrupted deletion never leaves a 'complete' folder."""
    (path / MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(out_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints; returns the deleted folders."""
    found = list_checkpoints(out_dir)
    doomed = found[:-keep_last] if keep_last > 0 else []
    for path in doomed:
        _remove(path)
    return doomed


def clean_partial(out_dir: str | Path) -> list[Path]:
    """Remove leftovers of interrupted writes: temp/trash folders, unmarked checkpoint folders and
    the temp files of atomic writes (``.NAME.tmp-PID``) in the run and its final/ and best/ exports.
    Call it holding the run folder's lock: no live writer can own them then."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    leftovers = [
        p for p in out.iterdir()
        if p.is_dir() and (p.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) or (_NAME.match(p.name) and not is_complete(p)))
    ]
    for folder in (out, out / "final", out / "best"):
        if folder.is_dir():
            leftovers += [p for p in folder.glob(".*.tmp-*") if p.is_file()]
    for p in leftovers:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if leftovers:
        log.info("%s: removed leftovers of an interrupted run: %s", out, ", ".join(p.name for p in leftovers))
    return leftovers


# --------------------------------------------------------------------------- reading


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """The trainer_state.json of a checkpoint folder."""
    file = Path(path) / "trainer_state.json"
    if not file.is_file():
        raise IntegrityError(f"checkpoint {path} is missing trainer_state.json")
    return _read_json(file)


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any], path: str | Path) -> None:
    """Raise ConfigError naming every field of RESUME_FIELDS that differs between runs, unless only
    the ranks are regrouped (batch_size x world_size and grad_accum unchanged)."""
    def global_batch(state: dict[str, Any]) -> Any:
        try:
            return int(state["batch_size"]) * int(state["world_size"])
        except (KeyError, TypeError, ValueError):
            return None

    if saved.get("grad_accum") == current.get("grad_accum") and global_batch(saved) is not None and \
            global_batch(saved) == global_batch(current):
        return
    changed = [
        f"{name} was {saved.get(name)} and is now {current.get(name)}"
        for name in RESUME_FIELDS
        if saved.get(name) != current.get(name)
    ]
    if changed:
        raise ConfigError(
            f"cannot resume from {path}: {'; '.join(changed)}. These fix which examples form each "
            "step, so an exact resume needs the same grad_accum and batch_size x world_size (the global "
            "micro-batch); restore them or start a new run"
        )


def load_model_weights(path: str | Path, model: nn.Module) -> None:
    """Load a checkpoint's model.safetensors into `model` (plain, DDP or FSDP2), strictly."""
    weights, meta = _read_safetensors(Path(path) / "model.safetensors")
    for alias, owner in json.loads(meta.get("aliases", "{}")).items():
        weights[alias] = weights[owner]
    inner = unwrap(model)
    if is_fsdp(inner):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(inner, weights, options=StateDictOptions(full_state_dict=True))
    else:
        inner.load_state_dict(weights, strict=True)


def load_optimizer_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load optimizer.json/.safetensors, keeping this optimizer's kernel choice (fused/foreach)."""
    state = read_tree(Path(path), "optimizer")
    impl = _kernel_choice(optimizer)
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(unwrap(model), optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(_by_position(state, _position_names(model, optimizer), path))
    _restore_kernel_choice(optimizer, impl)


_IMPL_KEYS = ("fused", "foreach", "capturable", "differentiable")


def _kernel_choice(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: g[k] for k in _IMPL_KEYS if k in g} for g in optimizer.param_groups]


def _restore_kernel_choice(optimizer: torch.optim.Optimizer, impl: list[dict[str, Any]]) -> None:
    for group, keep in zip(optimizer.param_groups, impl):
        group.update(keep)


def _by_position(state: dict[str, Any], names: list[str], path: str | Path) -> dict[str, Any]:
    """Turn name-keyed optimizer state back into torch's position-keyed form."""
    saved = [n for g in state["param_groups"] for n in g["params"]]
    if saved != names:
        missing, extra = sorted(set(names) - set(saved)), sorted(set(saved) - set(names))
        raise ValueError(f"{path}: optimizer state does not match the model's trainable parameters "
                         f"(missing {missing[:5]}, unexpected {extra[:5]}, or grouped differently)")
    position = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [position[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {position[n]: s for n, s in state["state"].items()}, "param_groups": groups}


def load_resume(
    out_dir: Path,
    resume: str | Path | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stream: Any,
    current: dict[str, Any],
    env: DistEnv = DistEnv(),
) -> tuple[Path | None, dict[str, Any] | None]:
    """Load the checkpoint `resume` asks for: (its path, its trainer_state), or (None, None) for a
    fresh run. A damaged checkpoint is named in a warning and the one before it is used; a
    checkpoint named explicitly is never swapped for another (its damage is an IntegrityError)."""
    candidates = resume_candidates(out_dir, resume)
    explicit = resume not in (None, "auto") and is_complete(Path(resume))
    damaged: list[str] = []
    for i, path in enumerate(candidates):
        try:
            verify_checkpoint(path)
            return path, load_checkpoint(path, model, optimizer, stream, current, env)
        except IntegrityError as e:
            if explicit:
                raise
            damaged.append(str(e))
            fallback = candidates[i + 1].name if i + 1 < len(candidates) else None
            log.warning("%s; %s", e, f"resuming from {fallback} instead" if fallback else "no older checkpoint")
    if damaged:
        raise IntegrityError(f"{out_dir}: no usable checkpoint ({'; '.join(damaged)}); move the damaged "
                             "checkpoints away to start afresh")
    return None, None


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stream: Any,
    current: dict[str, Any],
    env: DistEnv = DistEnv(),
) -> dict[str, Any]:
    """Restore weights, optimizer, this rank's RNG and stream state; returns trainer_state.

    `current` holds this run's RESUME_FIELDS; a mismatch raises ConfigError before anything
    is loaded.
    """
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    state = read_trainer_state(path)
    check_resume_compatible(state, current, path)
    if (path / SHARDED_DIR).is_dir():
        _load_sharded(path / SHARDED_DIR, model, optimizer)
    else:
        load_model_weights(path, model)
        load_optimizer_state(path, model, optimizer)
    own = (path / f"stream-rank{env.rank}.json").is_file()  # a rank the saving run did not have reads rank 0's
    stream.load_state_dict(read_tree(path, f"stream-rank{env.rank if own else 0}"))
    if (path / f"rng-rank{env.rank}.json").is_file():
        restore_rng_state(read_tree(path, f"rng-rank{env.rank}"))
    else:
        seed_everything(int(state.get("config", {}).get("seed", 0)) + env.rank + int(state.get("step", 0)))
    return state


def _save_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Weights and optimizer state of an FSDP2 model, each rank writing its own shards (no gather)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(unwrap(model), optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(directory))


def _load_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a sharded checkpoint into `model` and `optimizer` at this run's world size: FSDP2 takes
    its own shards, a single process or DDP the full tensors. Keeps the optimizer's kernel choice."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    inner = unwrap(model)
    impl = _kernel_choice(optimizer)
    model_state, optim_state = get_state_dict(inner, optimizer)  # this run's layout, filled by dcp.load
    state = {"model": model_state, "optimizer": optim_state}
    single = not (dist.is_available() and dist.is_initialized())
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process: intended
            dcp.load(state, checkpoint_id=str(directory), no_dist=single)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise IntegrityError(f"{directory}: the sharded checkpoint does not load into this model ({e})") from None
    set_state_dict(inner, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    optimizer.zero_grad(set_to_none=True)  # get_state_dict filled zero gradients to create the state
    _restore_kernel_choice(optimizer, impl)
