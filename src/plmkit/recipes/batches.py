"""The in-memory training stream over task features, for fine-tuning.

`FeatureBatches` is the stream that `plmkit.train.loop.train` reads: each epoch visits the
features in a permutation drawn from ``(seed, epoch)``, optionally grouped into batches of
similar length (less padding), and its ``state_dict()`` is just ``{epoch, position}`` (plus
checks), so a resumed run sees exactly the batches that an uninterrupted run would have.
(Evaluation walks features once, shortest first: `plmkit.infer.batching`.)

A feature is a dict of model inputs (see `plmkit.data.tasks.collate`): ints or lists of ints.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from plmkit.data.tasks import collate

Feature = Mapping[str, Any]
DEFAULT_BUCKET = 32
"""Fine-tuning's default length bucketing: sort within windows of 32 global batches. Short texts
(10-60 tokens) then pay for the longest of 32 similar lengths instead of the longest of a random 32."""
Batch = dict[str, torch.Tensor]
_ORDER_SALT = 0xF1E7


def _length(feature: Feature) -> int:
    return len(feature["input_ids"])


class FeatureBatches:
    """Shuffled, resumable micro-batches over a list of features.

    Args:
        features: the examples, as dicts of model inputs.
        batch_size: examples per micro-batch on this process.
        pad_id: padding id for ``input_ids`` (labels pad with -100, masks with 0).
        seed: seed of the per-epoch permutations.
        shuffle: False visits features in their given order every epoch.
        bucket: 0 = plain shuffling; k > 0 (default `DEFAULT_BUCKET`) = within each window of k
            global batches of the shuffled order, sort by length before cutting batches, then
            shuffle the batches (every batch is still a random draw of lengths-alike examples).
        keys: the feature keys to put in batches (None = all), e.g. `plmkit.infer.batching.input_names(model)`.

    One `iter()` yields the rest of the current epoch; the training loop calls `iter()`
    again for the next one. Under torchrun, `shard(rank, world_size)` makes each global batch
    ``batch_size * world_size`` examples of which this rank takes its slice; the last global
    batch of an epoch is then filled up from the start of the epoch's order, so every rank
    yields the same number of batches.
    """

    def __init__(self, features: Sequence[Feature], batch_size: int, pad_id: int, *, seed: int = 0,
                 shuffle: bool = True, bucket: int = DEFAULT_BUCKET, keys: Sequence[str] | frozenset[str] | None = None) -> None:
        if not features:
            raise ValueError("no training features: the training file gave no examples")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if bucket < 0:
            raise ValueError(f"bucket must be >= 0, got {bucket}")
        self.features = list(features)
        self.batch_size, self.pad_id, self.seed = batch_size, pad_id, seed
        self.shuffle, self.bucket = shuffle, bucket
        self.keys = None if keys is None else [k for k in self.features[0] if k in set(keys)]
        self.lengths = np.array([_length(f) for f in self.features])
        self.rank, self.world_size = 0, 1
        self.epoch = 0
        self.position = 0
        """Batches of the current epoch already yielded."""

    # ---- geometry ---------------------------------------------------------------------------
    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Batches per epoch on each process."""
        return -(-len(self.features) // self.global_batch)

    def describe(self) -> dict[str, Any]:
        """What the training loop's start block says of this data: its examples (rows) per epoch."""
        return {"examples": len(self.features)}

    def shard(self, rank: int, world_size: int) -> None:
        """Read only this rank's slice of each global batch (called once by the training loop)."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.rank, self.world_size = rank, world_size

    # ---- order ------------------------------------------------------------------------------
    def order(self, epoch: int) -> np.ndarray:
        """(N,) feature indices of `epoch` before cutting into batches."""
        n = len(self.features)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, _ORDER_SALT, epoch]).permutation(n)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches of `epoch`, each an index array of up to global_batch features."""
        order, size = self.order(epoch), self.global_batch
        if self.world_size > 1 and len(order) % size:
            order = np.concatenate([order, np.resize(order, size - len(order) % size)])
        if not self.bucket:
            return [order[i: i + size] for i in range(0, len(order), size)]
        batches = []
        window = size * self.bucket
        for start in range(0, len(order), window):
            chunk = order[start: start + window]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i: i + size] for i in range(0, len(chunk), size)]
        perm = np.random.default_rng([self.seed, _ORDER_SALT, epoch, 1]).permutation(len(batches))
        return [batches[i] for i in perm]

    def mine(self, global_batch: np.ndarray) -> np.ndarray:
        """This rank's slice (<= batch_size indices) of a global batch."""
        return global_batch[self.rank * self.batch_size: (self.rank + 1) * self.batch_size]

    def make_batch(self, indices: Sequence[int]) -> Batch:
        rows = [self.features[i] for i in indices]
        if self.keys is not None:
            rows = [{k: row[k] for k in self.keys} for row in rows]
        return collate(rows, self.pad_id)

    # ---- iteration and state ----------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        epoch, batches = self.epoch, self.epoch_batches(self.epoch)
        for position in range(self.position, len(batches)):
            rows = self.mine(batches[position])
            if position + 1 == len(batches):
                self.epoch, self.position = epoch + 1, 0
            else:
                self.position = position + 1
            yield self.make_batch(rows)

    def state_dict(self) -> dict[str, Any]:
        """The next batch is ``position`` of ``epoch``; the rest checks the data is the same."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_features": len(self.features), "global_batch": self.global_batch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state` at the next `iter()`; the data, seed and global batch must match."""
        expected = {"seed": self.seed, "num_features": len(self.features), "global_batch": self.global_batch}
        for key, value in expected.items():
            if state.get(key) != value:
                raise ValueError(f"data stream state does not match this data: {key} is {state.get(key)!r} in "
                                 f"the checkpoint but {value!r} now (same files, seed and batch size needed)")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < len(self):
            raise ValueError(f"data stream state out of range: epoch {epoch}, position {position} "
                             f"({len(self)} batches per epoch)")
        self.epoch, self.position = epoch, position
