"""What every inference shares: a model's inputs, position limit, special ids and class names,
and the one length-sorted batching.

Evaluation (`plmkit eval` / `predict`, the dev evaluation during fine-tuning) and the pipelines
(`plmkit.pipeline`, `plmkit serve`) run on these, so a metric measures what a user gets:

- `input_names`: the inputs a model's forward takes; token type ids only for a model with a
  segment vocabulary (type_vocab_size > 1), so GPT, RoBERTa and seq2seq never see them.
- `position_limit`, `pad_id`, `eos_id`, `special_ids`, `label_names`: one definition each.
- `map_sorted`: run a function over batches of items of similar length (least padding), results
  in item order, with a cancellation checkpoint (`plmkit.infer.control`) before each batch, and
  a progress bar inside a `progress(...)` block (`plmkit eval`, `predict`, dev evaluations).
- `run_batches`: a model over feature dicts that way, in eval mode, without autograd.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from plmkit.data.tasks.features import collate
from plmkit.infer.control import checkpoint
from plmkit.models.base import eval_mode

T = TypeVar("T")
R = TypeVar("R")
Feature = Mapping[str, Any]


# --------------------------------------------------------------------------- model facts


def position_limit(config: Any) -> int:
    """Most tokens one row may hold: the model's positions (less RoBERTa's offset)."""
    return int(config.max_positions - config.position_offset)


def special_ids(tokenizer: Any) -> dict[str, int | None]:
    """Model config ids matching a tokenizer: pad (else eos, else 0), bos (else [CLS]), eos (else [SEP])."""
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.cls_id
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.sep_id
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else eos
    return {"pad_token_id": pad if pad is not None else 0, "bos_token_id": bos, "eos_token_id": eos}


def pad_id(tokenizer: Any, config: Any) -> int:
    """The padding id of input_ids: the tokenizer's pad token, else the model's pad_token_id."""
    return int(tokenizer.pad_id) if tokenizer.pad_id is not None else int(config.pad_token_id)


def eos_id(tokenizer: Any, config: Any) -> int | None:
    """The token that ends a target: the model's eos_token_id, else the tokenizer's eos (else [SEP])."""
    if config.eos_token_id is not None:
        return int(config.eos_token_id)
    eos = special_ids(tokenizer)["eos_token_id"]
    return None if eos is None else int(eos)


def label_names(config: Any) -> list[str]:
    """Class names in id order: config.id2label, else LABEL_0, LABEL_1, ..."""
    id2label = config.id2label or {}
    return [id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels)]


def input_names(model: nn.Module) -> frozenset[str]:
    """Names of the inputs `model.forward` takes, less those its config makes meaningless.

    Token type ids are left out for models without a segment vocabulary (type_vocab_size <= 1:
    GPT, seq2seq, RoBERTa), whose embeddings then use type 0 throughout.
    """
    params = inspect.signature(type(model).forward).parameters
    names = {name for name in params if name != "self"}
    config = getattr(model, "config", None)
    if config is not None and config.type_vocab_size <= 1:
        names.discard("token_type_ids")
    return frozenset(names)


def device_of(model: nn.Module) -> torch.device:
    """The device of a model's (first) parameter."""
    return next(model.parameters()).device


def model_batch(model: nn.Module, rows: Sequence[Feature], pad: int,
                device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) tensors of `rows` holding only the inputs `model` takes, on `device`
    (default: the model's)."""
    names = input_names(model)
    batch = collate([{k: v for k, v in row.items() if k in names} for row in rows], pad)
    device = device if device is not None else device_of(model)
    return {k: v.to(device) for k, v in batch.items()}


# --------------------------------------------------------------------------- batching


def sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices of items in batches of up to `batch_size`, shortest items first (stable)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start: start + batch_size]


_PROGRESS: ContextVar[tuple[str, bool] | None] = ContextVar("plmkit_progress", default=None)


@contextmanager
def progress(description: str, leave: bool = True) -> Iterator[None]:
    """Show a progress bar (stderr) for the batched work inside the block: the first `map_sorted`
    reached counts its items under `description` (work nested in it shows no bar of its own)."""
    token = _PROGRESS.set((description, leave))
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def map_sorted(items: Sequence[T], lengths: Sequence[int], batch_size: int,
               fn: Callable[[list[T]], Sequence[R]]) -> list[R]:
    """``fn`` over batches of items of similar length; one result per item, in item order.

    ``fn(batch)`` returns one result per item of the batch. Before each batch, a controlled
    caller (the server) may cancel (`plmkit.infer.control.checkpoint`). Inside `progress(...)`
    a bar counts the items done.
    """
    shown = _PROGRESS.get()
    token = _PROGRESS.set(None)  # nested batched work: no second bar
    bar = tqdm(total=len(items), desc=shown[0] if shown else None, unit="ex", leave=shown[1] if shown else False,
               dynamic_ncols=True, file=sys.stderr, disable=shown is None or not items)
    try:
        results: list[Any] = [None] * len(items)
        for chunk in sorted_batches(lengths, batch_size):
            checkpoint()
            outputs = fn([items[i] for i in chunk])
            if len(outputs) != len(chunk):
                raise RuntimeError(f"a batch of {len(chunk)} gave {len(outputs)} results")
            for i, out in zip(chunk, outputs):
                results[i] = out
            bar.update(len(chunk))
        return results
    finally:
        bar.close()
        _PROGRESS.reset(token)


def run_batches(model: nn.Module, features: Sequence[Feature], batch_size: int, pad: int,
                per_batch: Callable[[Any, dict[str, torch.Tensor]], Sequence[R]]) -> list[R]:
    """`model` over feature dicts in length-sorted batches (eval mode, no autograd); one output per
    feature, in order. ``per_batch(model_output, batch)`` splits a batch's output into rows."""

    def run(rows: list[Feature]) -> Sequence[R]:
        batch = model_batch(model, rows, pad)
        return per_batch(model(**batch), batch)

    with eval_mode(model), torch.inference_mode():
        return map_sorted(features, [len(f["input_ids"]) for f in features], batch_size, run)


def mean_loss(model: nn.Module, features: Sequence[Feature], batch_size: int, pad: int) -> float:
    """Mean loss over all label positions of `features` (each batch weighted by its n_targets)."""
    totals: list[tuple[float, float]] = []

    def per_batch(out: Any, batch: dict[str, torch.Tensor]) -> list[None]:
        n = float(out.n_targets) if out.n_targets is not None else float(batch["input_ids"].size(0))
        totals.append((float(out.loss) * n, n))
        return [None] * batch["input_ids"].size(0)

    run_batches(model, features, batch_size, pad, per_batch)
    count = sum(n for _, n in totals)
    return sum(s for s, _ in totals) / count if count else float("nan")


__all__ = [
    "device_of", "eos_id", "input_names", "label_names", "map_sorted", "mean_loss", "model_batch", "pad_id",
    "position_limit", "progress", "run_batches", "sorted_batches", "special_ids",
]
