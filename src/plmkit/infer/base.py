"""The machinery every inference pipeline shares: options, length-sorted batching, device, dtype.

A pipeline turns each input into one or more features (`Feature`: token lists plus what
post-processing needs), runs all features through the model in batches sorted by length
(less padding) under `torch.inference_mode` and optional autocast, and turns the outputs
back into one dict per input, in input order. The task pipelines live in `plmkit.infer.pipeline`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from plmkit.errors import UserError
from plmkit.heads import pipeline_task
from plmkit.data.tasks.features import trim_span
from plmkit.infer.batching import device_of, label_names, map_sorted, model_batch, pad_id, position_limit
from plmkit.models.base import eval_mode

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": None, "float32": None}


class InputError(UserError):
    """One input of a pipeline call cannot be used; `index` says which (the message starts with
    "input INDEX: " when the call had several)."""

    def __init__(self, index: int, message: str, several: bool = True) -> None:
        super().__init__(f"input {index}: {message}" if several else message)
        self.index = index
        self.reason = message


class NonFiniteScores(UserError):
    """The model produced NaN or infinite scores: its weights are damaged (or fp16 overflowed)."""


@dataclass
class Feature:
    """One model input row built from one input: token lists (T,) and what post-processing needs."""

    inputs: dict[str, list[int]]
    meta: Any = None


class Pipeline:
    """Base of every pipeline: option handling, length-sorted batching, device and dtype.

    Subclasses set `task`, `options` (valid options with defaults) and implement `preprocess`
    (input -> features; or `preprocess_batch` for many inputs at once), `forward` (features ->
    one output per feature) and `postprocess` (input, its features and outputs -> result dict).
    Each call runs the model in eval mode and restores its mode afterwards.
    """

    task: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    free_options: ClassVar[bool] = False
    """True: options beyond `options` pass through (to generation), unchecked here."""

    def __init__(self, model, tokenizer, device: str | torch.device | None = None, batch_size: int = 32,
                 dtype: str | torch.dtype | None = None, **defaults: Any) -> None:
        self.check_model(model)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device) if device is not None else device_of(model)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.dtype = resolve_dtype(dtype)
        self.defaults = self._checked({**self.options, **defaults})

    # ---- model checks ------------------------------------------------------------------------
    @classmethod
    def accepts(cls, model) -> bool:
        """Whether `model`'s shape and head can serve this task."""
        return True

    @classmethod
    def needs(cls) -> str:
        return "any model"

    def check_model(self, model) -> None:
        if not self.accepts(model):
            raise ValueError(f"{self.task} needs {self.needs()}; this model ({model.config.arch}) "
                             f"has a {model.task} head (fine-tune it for {self.task}, or pick the task "
                             f"{task_for_model(model)!r})")

    @property
    def config(self):
        return self.model.config

    @property
    def max_length(self) -> int:
        """Most tokens one row may hold (the model's positions)."""
        return position_limit(self.config)

    @property
    def pad_id(self) -> int:
        return pad_id(self.tokenizer, self.config)

    # ---- calling -----------------------------------------------------------------------------
    def __call__(self, inputs: Any, **options: Any) -> dict[str, Any] | list[dict[str, Any]]:
        """One input -> one dict; a list of inputs -> a list of dicts, in input order."""
        single = not isinstance(inputs, list)
        items = [inputs] if single else inputs
        opts = self._checked({**self.defaults, **options})
        results = self.run(items, opts)
        return results[0] if single else results

    def _checked(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.options))
        if unknown and not self.free_options:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for {self.task}; "
                             f"valid options: {', '.join(sorted(self.options)) or 'none'}")
        return options

    def run(self, items: list[Any], opts: dict[str, Any]) -> list[dict[str, Any]]:
        """Preprocess every input, forward all features in length-sorted batches, postprocess."""
        made = self.preprocess_batch(items, opts)
        owners = [i for i, features in enumerate(made) for _ in features]
        features = [f for fs in made for f in fs]
        outputs = self._forward_sorted(features, opts)
        grouped: list[list[int]] = [[] for _ in items]
        for k, owner in enumerate(owners):
            grouped[owner].append(k)
        return [self.postprocess(item, [features[k] for k in ks], [outputs[k] for k in ks], opts)
                for item, ks in zip(items, grouped)]

    def preprocess_batch(self, items: list[Any], opts: dict[str, Any]) -> list[list[Feature]]:
        """The features of each input (`preprocess` one by one); a bad input is an `InputError`."""
        made = []
        for i, item in enumerate(items):
            with input_errors(i, len(items)):
                made.append(self.preprocess(item, opts))
        return made

    def _forward_sorted(self, features: list[Feature], opts: dict[str, Any]) -> list[Any]:
        lengths = [len(f.inputs["input_ids"]) for f in features]
        with eval_mode(self.model), torch.inference_mode(), self.autocast():
            outputs = map_sorted(features, lengths, self.batch_size, lambda chunk: self.forward(chunk, opts))
        check_finite(outputs, self.task)
        return outputs

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def collate(self, features: list[Feature]) -> dict[str, Tensor]:
        """Right-padded (B, T) tensors on the device, only with inputs this model's forward takes."""
        return model_batch(self.model, [f.inputs for f in features], self.pad_id, self.device)

    def encode(self, text: str, pair: str | None = None, max_length: int | None = None) -> Feature:
        return self.encode_batch([text], [pair], max_length)[0]

    def encode_batch(self, texts: list[Any], pairs: list[str | None] | None = None, max_length: int | None = None,
                     words: bool = False) -> list[Feature]:
        """One feature per text (or text pair; None = no pair), cut to `max_length` tokens (at most
        the model's); ``words=True``: each text is a list of words."""
        limit = min(max_length or self.max_length, self.max_length)
        pairs = pairs if pairs is not None else [None] * len(texts)
        out: list[Feature | None] = [None] * len(texts)
        for has_pair in (False, True):
            rows = [i for i, p in enumerate(pairs) if (p is not None) == has_pair]
            if not rows:
                continue
            encodings = self.tokenizer.encode_batch([texts[i] for i in rows],
                                                    [pairs[i] for i in rows] if has_pair else None,
                                                    max_length=limit, is_split_into_words=words)
            for i, enc in zip(rows, encodings):
                inputs = {"input_ids": enc.ids, "token_type_ids": enc.type_ids, "attention_mask": enc.attention_mask}
                out[i] = Feature(inputs, enc)
        return out  # type: ignore[return-value]

    # ---- to implement ------------------------------------------------------------------------
    def preprocess(self, item: Any, opts: dict[str, Any]) -> list[Feature]:
        raise NotImplementedError

    def forward(self, features: list[Feature], opts: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    def postprocess(self, item: Any, features: list[Feature], outputs: list[Any],
                    opts: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


def as_text_pair(item: Any) -> tuple[str, str | None]:
    """(text, pair) of a text, a (text, pair) tuple or {"text": ..., "text_pair": ...}."""
    if isinstance(item, str):
        return item, None
    if isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, str) for t in item):
        return item[0], item[1]
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        extra = set(item) - {"text", "text_pair"}
        pair = item.get("text_pair")
        if not extra and (pair is None or isinstance(pair, str)):
            return item["text"], pair
    raise ValueError(f"expected a text, a (text, text_pair) tuple or {{'text': ..., 'text_pair': ...}}, got {item!r}")


def as_text(item: Any) -> str:
    """The input itself when it is a text; a ValueError naming what it is otherwise."""
    if not isinstance(item, str):
        raise ValueError(f"expected a text (str), got {type(item).__name__}: {item!r}")
    return item


def task_for_model(model, recipe: str | None = None) -> str:
    """The pipeline task that serves a model: the one its fine-tuning recipe names (finetune.json)
    when that pipeline accepts the model, else the one of its head (`plmkit.heads`)."""
    from plmkit.infer.pipeline import PIPELINES

    if recipe is not None:
        task = pipeline_task(recipe=recipe)
        if task in PIPELINES and PIPELINES[task].accepts(model):
            return task
    return pipeline_task(head=model.task, arch=model.config.arch)


def check_finite(outputs: list[Any], task: str) -> None:
    """Raise `NonFiniteScores` when any float array among the outputs (or inside their tuples)
    holds NaN or infinity: a pipeline never returns such a score as a result."""
    for out in outputs:
        for part in out if isinstance(out, tuple) else (out,):
            if isinstance(part, np.ndarray) and part.dtype.kind == "f" and not np.isfinite(part).all():
                raise NonFiniteScores(f"{task}: the model produced non-finite scores (NaN or infinity); its "
                                      "weights may be damaged, or fp16 overflowed (try dtype='bf16' or fp32)")


@contextlib.contextmanager
def input_errors(index: int, count: int):
    """Turn a ValueError raised while preparing input `index` (of `count`) into an `InputError`."""
    try:
        yield
    except InputError:
        raise
    except ValueError as e:
        raise InputError(index, str(e), count > 1) from None


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """None (full precision) or the autocast dtype for "bf16"/"fp16"/torch dtypes."""
    if dtype is None or dtype == torch.float32:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be bf16, fp16 or fp32, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


__all__ = ["Feature", "InputError", "NonFiniteScores", "Pipeline", "as_text", "as_text_pair", "check_finite",
           "input_errors", "label_names", "resolve_dtype", "task_for_model", "trim_span"]
