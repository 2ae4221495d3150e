"""Deterministic, resumable streams of pretraining batches.

:class:`PretrainingStream` yields batches forever. Epoch ``e`` visits the objective's examples
in a permutation drawn from ``(seed, e)``; each step takes the next ``batch_size * world_size``
examples of that permutation and gives rank ``r`` its slice ``[r * batch_size, (r + 1) *
batch_size)``. The last incomplete global batch of an epoch is dropped, so every rank sees the
same number of batches. The examples themselves are built by the objective from ``(seed,
epoch, index)`` (see :mod:`plmkit.data.pretraining`), so a stream restored from
``state_dict()`` yields exactly the batches an uninterrupted run would have.

Collation runs on the calling process; ``prefetch > 0`` builds that many batches ahead in a
background thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plmkit.data.pretraining import Mixture, Objective, build_objective
from plmkit.data.shards import ShardSet

Batch = dict[str, torch.Tensor]
_ORDER_SALT = 0x0DE5_0E7
STATE_VERSION = 1


class PretrainingStream:
    """Endless batches of an objective for one rank, with exact resume.

    Args:
        objective: the examples (e.g. from :func:`plmkit.data.pretraining.build_objective`).
        batch_size: examples per batch on this rank (the micro-batch).
        seed: seed of the epoch permutations.
        rank, world_size: this process's place among the data-parallel processes.
        prefetch: batches built ahead in a background thread (0 = build on demand).
    """

    def __init__(self, objective: Objective, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 prefetch: int = 2) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.objective = objective
        self.batch_size = batch_size
        self.seed = seed
        self.prefetch = max(0, prefetch)
        self.epoch = 0
        self.position = 0
        """Batches of the current epoch already yielded."""
        self.shard(rank, world_size)

    def shard(self, rank: int, world_size: int) -> None:
        """Make this the stream of ``rank`` among ``world_size`` processes (call before iterating).
        Each rank keeps ``batch_size`` examples per batch: a global batch is batch_size x world_size."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        count = len(self.objective)
        if count < self.batch_size * world_size:
            raise ValueError(f"{count} {self.objective.name} examples are fewer than one global batch (batch_size "
                             f"{self.batch_size} x world_size {world_size}); use a smaller batch or more data")
        self.rank, self.world_size = rank, world_size
        self.global_batch = self.batch_size * world_size
        self.batches_per_epoch = count // self.global_batch

    def order(self, epoch: int) -> np.ndarray:
        """(N,) example indices in the order of ``epoch``."""
        return np.random.default_rng([self.seed, _ORDER_SALT, epoch]).permutation(len(self.objective))

    def indices(self, epoch: int, position: int) -> np.ndarray:
        """(batch_size,) example indices of this rank's batch ``position`` in ``epoch``."""
        start = position * self.global_batch + self.rank * self.batch_size
        return self.order(epoch)[start : start + self.batch_size]

    def _produce(self, epoch: int, position: int) -> Iterator[tuple[int, int, Batch]]:
        """(epoch, position after, batch) from the given point on, forever."""
        while True:
            order = self.order(epoch)
            while position < self.batches_per_epoch:
                start = position * self.global_batch + self.rank * self.batch_size
                batch = self.objective.batch(order[start : start + self.batch_size], epoch)
                position += 1
                yield epoch, position, batch
            epoch, position = epoch + 1, 0

    def __iter__(self) -> Iterator[Batch]:
        """Batches from the current state on; state_dict() follows what was yielded."""
        source = self._produce(self.epoch, self.position)
        if self.prefetch:
            source = _prefetched(source, self.prefetch)
        try:
            for epoch, position, batch in source:
                if position == self.batches_per_epoch:
                    epoch, position = epoch + 1, 0
                self.epoch, self.position = epoch, position
                yield batch
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def describe(self) -> dict[str, Any]:
        """What the training loop's start block and run.json say of this data: examples per epoch,
        tokens per example (at most), the objective, and the shard folders read."""
        folders = [str(p.shards.path) for p in getattr(self.objective, "parts", [self.objective])]
        return {"examples": len(self.objective), "tokens_per_example": self.objective.max_length,
                "what": f"{self.objective.name} examples from {', '.join(folders)}", "inputs": folders}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable position: the next batch is ``position`` of ``epoch``."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "position": self.position, "seed": self.seed,
                "global_batch": self.global_batch, "num_examples": len(self.objective)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next ``iter()``. The data, seed and global batch
        (batch_size x world_size) must match the run that saved it; ranks may be regrouped."""
        expected = {"seed": self.seed, "global_batch": self.global_batch, "num_examples": len(self.objective)}
        for key, value in expected.items():
            if state.get(key) != value:
                raise ValueError(f"data stream state does not match this stream: {key} is {state.get(key)!r} "
                                 f"in the saved state but {value!r} here")
        if not 0 <= int(state["position"]) < self.batches_per_epoch or int(state["epoch"]) < 0:
            raise ValueError(f"data stream state out of range: epoch {state['epoch']}, position {state['position']} "
                             f"(batches per epoch: {self.batches_per_epoch})")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def _prefetched(source: Iterator[Any], depth: int) -> Iterator[Any]:
    """Items of ``source`` built ``depth`` ahead in a daemon thread; errors re-raised here."""
    items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        items.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # handed to the consumer
            items.put(("error", e))

    thread = threading.Thread(target=work, name="plmkit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)


def eval_batches(objective: Objective, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 limit: int | None = None) -> Iterator[Batch]:
    """Every example once, in order, with the masks/pairs of epoch 0 (the same on every call):
    for held-out MLM/NSP accuracy and perplexity. Rank ``r`` takes examples ``r, r + W, ...``;
    the last batch may be smaller. ``limit`` caps the number of examples (before sharding)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count = len(objective) if limit is None else min(limit, len(objective))
    mine = np.arange(rank, count, world_size)
    for start in range(0, len(mine), batch_size):
        yield objective.batch(mine[start : start + batch_size], 0)


Sources = str | Path | Sequence[tuple[str | Path, float]]
"""One shard folder, or several as (folder, weight) pairs (see `plmkit.data.pretraining.Mixture`)."""


def open_objective(sources: Sources, split: str, objective: str, *, max_length: int, seed: int = 0,
                   **options: Any) -> Objective:
    """``objective`` over one split of one shard folder, or of several mixed by weight."""
    pairs = [(sources, 1.0)] if isinstance(sources, (str, Path)) else list(sources)
    parts, weights = [], []
    for path, weight in pairs:
        shards = ShardSet.open(path, split)
        if shards.num_documents == 0:
            if split == "eval":
                raise ValueError(f"{path}: the eval split is empty; prepare the shards with --holdout > 0")
            raise ValueError(f"{path}: the {split} split is empty")
        parts.append(build_objective(objective, shards, max_length, seed=seed, **options))
        weights.append(weight)
    if len(parts) == 1 and weights[0] == 1.0:
        return parts[0]
    return Mixture(parts, weights, seed=seed)


def open_stream(sources: Sources, objective: str, *, max_length: int, batch_size: int, seed: int = 0,
                rank: int = 0, world_size: int = 1, prefetch: int = 2, **options: Any) -> PretrainingStream:
    """The training stream of one shard folder, or several mixed by weight: ``objective`` (bert,
    albert, roberta, electra, gpt, seq2seq) over the train split; ``options`` go to the objective
    (e.g. ``whole_word=True``)."""
    built = open_objective(sources, "train", objective, max_length=max_length, seed=seed, **options)
    return PretrainingStream(built, batch_size, seed=seed, rank=rank, world_size=world_size, prefetch=prefetch)


def open_eval(sources: Sources, objective: str, *, max_length: int, seed: int = 0, **options: Any) -> Objective:
    """The objective over the held-out split of the shard folder(s) (for :func:`eval_batches`); several
    sources are mixed with weight 1 each (every held-out example once)."""
    pairs = [(sources, 1.0)] if isinstance(sources, (str, Path)) else [(path, 1.0) for path, _ in sources]
    return open_objective(pairs, "eval", objective, max_length=max_length, seed=seed, **options)
