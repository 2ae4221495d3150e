"""Padding features into batches, and the tokenizer backend used by the feature builders.

A feature is a dict of model inputs: ints (a class label, a start position) or sequences of
ints (``input_ids``, ``labels``, ...: lists, or 1-D numpy arrays as the pretraining objectives
build them). `collate` pads them on the right: ``input_ids`` and ``decoder_input_ids`` with
`pad_id`, ``labels`` with -100 (ignored by every loss), anything else (``attention_mask``,
``token_type_ids``) with 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer as Backend

from plmkit.data.tokenizer import Tokenizer

TokenizerLike = Tokenizer | Backend
IGNORE_INDEX = -100
_PAD_WITH_ID = ("input_ids", "decoder_input_ids")
_PAD_WITH_IGNORE = ("labels",)


def collate(
    features: Sequence[Mapping[str, Any]],
    pad_id: int,
    *,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Stack features into tensors: scalars -> (B,), lists -> (B, T) padded to the longest.

    `pad_to_multiple_of` rounds T up (e.g. 8 for tensor cores). Every feature must have the
    same keys.
    """
    if not features:
        raise ValueError("collate needs at least one feature")
    keys = list(features[0])
    for i, feature in enumerate(features):
        if list(feature) != keys:
            raise ValueError(f"feature {i} has keys {sorted(feature)}, feature 0 has {sorted(keys)}")
    return {key: _stack(key, [f[key] for f in features], pad_id, pad_to_multiple_of) for key in keys}


def _stack(key: str, values: list[Any], pad_id: int, multiple: int | None) -> torch.Tensor:
    if all(isinstance(v, (int, np.integer)) for v in values):
        return torch.tensor([int(v) for v in values], dtype=torch.long)  # (B,)
    if all(isinstance(v, (int, float, np.number)) for v in values):
        return torch.tensor([float(v) for v in values], dtype=torch.float32)  # (B,)
    length = max(len(v) for v in values)
    if multiple:
        length = -(-length // multiple) * multiple
    pad = pad_id if key in _PAD_WITH_ID else IGNORE_INDEX if key in _PAD_WITH_IGNORE else 0
    out = np.full((len(values), length), pad, dtype=np.int64)  # (B, T)
    for row, value in zip(out, values):
        row[: len(value)] = value
    return torch.from_numpy(out)


def backend_of(tokenizer: TokenizerLike) -> Backend:
    """The `tokenizers.Tokenizer` behind a plmkit Tokenizer (or the argument itself)."""
    if isinstance(tokenizer, Backend):
        return tokenizer
    backend = getattr(tokenizer, "backend", None)
    if not isinstance(backend, Backend):
        raise TypeError(f"expected a plmkit Tokenizer or tokenizers.Tokenizer, got {type(tokenizer).__name__}")
    return backend


def truncating_backend(
    tokenizer: TokenizerLike, max_length: int | None, *, stride: int = 0, strategy: str = "longest_first",
) -> Backend:
    """A private copy of the backend that truncates as asked and never pads.

    A copy, so that the caller's tokenizer settings are left as they were.
    """
    backend = Backend.from_str(backend_of(tokenizer).to_str())
    backend.no_padding()
    if max_length is None:
        backend.no_truncation()
    else:
        backend.enable_truncation(max_length, stride=stride, strategy=strategy)
    return backend


def trim_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Character span [start, end) of `text` shrunk to exclude leading and trailing whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def special_id(tokenizer: TokenizerLike, name: str, given: int | None) -> int:
    """`given`, else the tokenizer's ``<name>_id`` attribute; a ValueError when neither exists."""
    if given is not None:
        return given
    value = getattr(tokenizer, f"{name}_id", None)
    if value is None:
        raise ValueError(f"the tokenizer has no {name} token; pass {name}_id= explicitly")
    return int(value)
