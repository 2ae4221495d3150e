"""Label vocabularies shared by classification and tagging, and class weights for imbalance."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from plmkit.errors import DataError


@dataclass(frozen=True)
class LabelMap:
    """A fixed, ordered label vocabulary: ``id2label[i]`` is the name of class ``i``."""

    id2label: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.id2label)) != len(self.id2label):
            raise ValueError(f"duplicate label names in {list(self.id2label)}")

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> LabelMap:
        """The distinct labels, sorted: numerically when all are integers ("2" < "10"), else as text."""
        names = set(labels)
        if names and all(_is_int(n) for n in names):
            return cls(tuple(sorted(names, key=int)))
        return cls(tuple(sorted(names)))

    @classmethod
    def from_config(cls, id2label: Mapping[int | str, str] | Sequence[str]) -> LabelMap:
        """Rebuild from a checkpoint's ``id2label`` (a list, or a dict keyed by int or str ids)."""
        if isinstance(id2label, Mapping):
            ids = sorted(int(k) for k in id2label)
            if ids != list(range(len(ids))):
                raise ValueError(f"id2label ids must be 0..{len(ids) - 1}, got {ids}")
            by_int = {int(k): v for k, v in id2label.items()}
            return cls(tuple(by_int[i] for i in ids))
        return cls(tuple(id2label))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.id2label)}

    def __len__(self) -> int:
        return len(self.id2label)

    @classmethod
    def for_training(cls, train: Iterable[tuple[str, str]], dev: Iterable[tuple[str, str]] = (), *,
                     labels: Sequence[str] | None = None, new_dev_labels: str = "error") -> LabelMap:
        """The label vocabulary of a fine-tuning run from its (label, ``file:line``) pairs.

        `labels` fixes it (every label must be one of them); else it is the sorted training
        labels. A dev label no training example has is a DataError naming it and its line
        (``new_dev_labels="error"``), or becomes a class of its own (``"add"``).
        """
        train, dev = list(train), list(dev)
        if new_dev_labels not in ("error", "add"):
            raise ValueError(f"new_dev_labels must be 'error' or 'add', got {new_dev_labels!r}")
        if labels:
            vocabulary = cls(tuple(labels))
        else:
            seen = {label for label, _ in train}
            if new_dev_labels == "error":
                for label, where in dev:
                    if label not in seen:
                        raise where_error(where, f"dev label {label!r} never occurs in the training data "
                                                 f"(labels: {sorted(seen)[:20]}); fix the label, or set "
                                                 "new_dev_labels=add to make it a class of its own")
            vocabulary = cls.from_labels(seen | {label for label, _ in dev})
        for label, where in train + dev:
            vocabulary.encode(label, where)
        return vocabulary

    def encode(self, label: str, where: str = "") -> int:
        """The id of `label`; an unknown label is a DataError naming `where` (``file:line``)."""
        try:
            return self.id2label.index(label)
        except ValueError:
            raise where_error(where, f"label {label!r} is not one of {list(self.id2label)}") from None

    def decode(self, index: int) -> str:
        return self.id2label[index]


def class_weights(label_ids: Sequence[int], num_labels: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (k * count_c)``, shape (num_labels,).

    ``n`` is the number of labels and ``k`` the number of classes present, so a balanced set
    gets all ones (scikit-learn's "balanced" rule). A class absent from `label_ids` gets
    weight 0: it never contributes to a loss computed on these labels.
    """
    counts = torch.bincount(torch.as_tensor(list(label_ids), dtype=torch.long), minlength=num_labels)
    if counts.numel() > num_labels:
        raise ValueError(f"label id {counts.numel() - 1} is out of range for {num_labels} labels")
    weights = torch.zeros(num_labels, dtype=torch.float32)
    present = counts > 0
    weights[present] = counts.sum().float() / (int(present.sum()) * counts[present].float())
    return weights


def where_error(where: str, message: str) -> ValueError:
    """A DataError at ``file:line`` `where` (a plain ValueError when `where` is empty)."""
    path, _, line = where.rpartition(":")
    if path and line.isdigit():
        return DataError(path, int(line), message)
    return DataError(where, None, message) if where else ValueError(message)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
