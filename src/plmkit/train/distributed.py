"""Parallelism applied from outside the model: `torchrun` + torch.distributed, DDP or FSDP2.

Launch any training script with ``torchrun --nproc_per_node N script.py``; `init_distributed`
reads the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
joins the process group (gloo on CPU, nccl on CUDA). A single process without those
variables is world size 1 and every helper here is a no-op for it. The model itself never
learns about ranks: `parallelize` wraps it with DDP or shards it with FSDP2, and
`gradient_sync` turns gradient communication off for the accumulation micro-batches.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

Strategy = Literal["ddp", "fsdp"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank among `world_size` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes run files and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" = cuda when available, else cpu; otherwise a torch device string ("cpu", "cuda:1")."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available (use 'cpu' or 'auto')")
    return device


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (or reuse an initialized one).

    Without WORLD_SIZE > 1 in the environment and no initialized group, returns a
    single-process DistEnv on `device`. On CUDA each process takes cuda:LOCAL_RANK.
    """
    dev = resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        if world > 1:
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def current_env() -> DistEnv:
    """Where this process stands without joining anything: the rank and size of the process group
    it has joined (`init_distributed`), else torchrun's RANK / WORLD_SIZE, else a single process.

    The one answer to "am I the main process" (`current_env().is_main`), before or after joining.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return DistEnv(rank=rank, world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", str(rank))))


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place; returns it."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def parallelize(model: nn.Module, env: DistEnv, strategy: Strategy = "ddp") -> nn.Module:
    """Wrap `model` (already on env.device) for data parallelism; unchanged at world size 1.

    "ddp" replicates the model and all-reduces gradients. "fsdp" shards parameters,
    gradients and optimizer state with FSDP2: every element of every nn.ModuleList (the
    Transformer blocks) becomes its own shard unit, then the root.
    """
    if not env.distributed:
        return model
    if strategy == "ddp":
        ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"parallel: expected 'ddp' or 'fsdp', got {strategy!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper or a torch.compile wrapper (FSDP2 shards in place)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def is_fsdp(model: nn.Module) -> bool:
    """Whether `model` was sharded by FSDP2 (without importing FSDP when nobody has)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(unwrap(model), fsdp.FSDPModule)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Communicate gradients in the backward passes inside this block only when `enabled`.

    Gradient accumulation runs its first micro-batches with enabled=False and the last with
    enabled=True, so gradients cross the network once per optimizer step.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
    elif is_fsdp(model):
        unwrap(model).set_requires_gradient_sync(enabled)
        try:
            yield
        finally:
            unwrap(model).set_requires_gradient_sync(True)
    else:
        yield


def shard_stream(stream: Any, env: DistEnv) -> None:
    """Give each rank its share of the data.

    Calls ``stream.shard(rank, world_size)`` when the stream has it; a stream built for this
    rank already (``stream.rank`` and ``stream.world_size`` match) is left alone; anything
    else would feed every rank the same batches and is an error.
    """
    if not env.distributed:
        return
    shard = getattr(stream, "shard", None)
    if shard is not None:
        shard(env.rank, env.world_size)
        return
    placed = (getattr(stream, "rank", None), getattr(stream, "world_size", None))
    if placed != (env.rank, env.world_size):
        raise TypeError(
            f"{type(stream).__name__} cannot be split over {env.world_size} processes: give it a "
            f"shard(rank, world_size) method or build it with rank={env.rank}, world_size={env.world_size} "
            f"(it has rank={placed[0]}, world_size={placed[1]})"
        )


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """All weights of `model` as full CPU tensors (a collective under FSDP; rank 0 gets them)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    inner = unwrap(model)
    if not is_fsdp(inner):
        return inner.state_dict()
    return get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export_pretrained(model: nn.Module, directory: Path, env: DistEnv, tokenizer: Any = None) -> Path | None:
    """Write ``save_pretrained(directory)`` of the user's model from rank 0; None if it has none.

    Under FSDP the full weights are gathered and saved from an unsharded copy built on rank 0.
    """
    inner = unwrap(model)
    if getattr(inner, "save_pretrained", None) is None:
        return None
    target = inner
    if is_fsdp(inner):
        from torch.distributed.fsdp import FSDPModule

        weights = full_state_dict(inner)
        if env.is_main:
            cls = next(c for c in type(inner).__mro__ if not issubclass(c, FSDPModule))
            target = cls(inner.config)
            target.load_state_dict(weights)
    if env.is_main:
        kwargs = {} if tokenizer is None else {"tokenizer": tokenizer}
        target.save_pretrained(directory, **kwargs)
    barrier(env)
    return directory
