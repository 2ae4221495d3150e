"""The machinery every inference pipeline shares: options, length-sorted batching, device, dtype.

A pipeline turns each input into one or more features (`Feature`: token lists plus what
post-processing needs), runs all features through the model in batches sorted by length
(less padding) under `torch.inference_mode` and optional autocast, and turns the outputs
back into one dict per input, in input order. The task pipelines live in `plmkit.infer.pipeline`.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from plmkit.data.tasks.features import collate
from plmkit.infer.control import checkpoint

RECIPE_FILE = "finetune.json"
"""Written by the fine-tuning recipes into a run and its model folders: {"task": ..., "config": ...}."""
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": None, "float32": None}


@dataclass
class Feature:
    """One model input row built from one input: token lists (T,) and what post-processing needs."""

    inputs: dict[str, list[int]]
    meta: Any = None


class Pipeline:
    """Base of every pipeline: option handling, length-sorted batching, device and dtype.

    Subclasses set `task`, `options` (valid options with defaults) and implement `preprocess`
    (input -> features), `forward` (features -> one output per feature) and `postprocess`
    (input, its features and outputs -> result dict).
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
        self.device = torch.device(device) if device is not None else model.device
        self.model = model.to(self.device).eval()
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
        return self.config.max_positions - self.config.position_offset

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_id
        return int(pad) if pad is not None else int(self.config.pad_token_id)

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
        owners, features = [], []
        for i, item in enumerate(items):
            try:
                made = self.preprocess(item, opts)
            except ValueError as e:
                raise ValueError(f"input {i}: {e}" if len(items) > 1 else str(e)) from None
            owners += [i] * len(made)
            features += made
        outputs = self._forward_sorted(features, opts)
        grouped: list[list[int]] = [[] for _ in items]
        for k, owner in enumerate(owners):
            grouped[owner].append(k)
        return [self.postprocess(item, [features[k] for k in ks], [outputs[k] for k in ks], opts)
                for item, ks in zip(items, grouped)]

    def _forward_sorted(self, features: list[Feature], opts: dict[str, Any]) -> list[Any]:
        order = sorted(range(len(features)), key=lambda k: len(features[k].inputs["input_ids"]))
        outputs: list[Any] = [None] * len(features)
        with torch.inference_mode(), self.autocast():
            for start in range(0, len(order), self.batch_size):
                checkpoint()  # a controlled caller (the server) may cancel between batches
                chunk = order[start: start + self.batch_size]
                for k, out in zip(chunk, self.forward([features[k] for k in chunk], opts)):
                    outputs[k] = out
        return outputs

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def collate(self, features: list[Feature]) -> dict[str, Tensor]:
        """Right-padded (B, T) tensors on the device, only with inputs this model's forward takes."""
        batch = collate([f.inputs for f in features], self.pad_id)
        if self.config.arch != "encoder" or self.config.type_vocab_size == 0:
            batch.pop("token_type_ids", None)
        return {k: v.to(self.device) for k, v in batch.items()}

    def encode(self, text: str, pair: str | None = None, max_length: int | None = None) -> Feature:
        enc = self.tokenizer.encode(text, pair, max_length=min(max_length or self.max_length, self.max_length))
        inputs = {"input_ids": enc.ids, "token_type_ids": enc.type_ids, "attention_mask": enc.attention_mask}
        return Feature(inputs, enc)

    # ---- to implement ------------------------------------------------------------------------
    def preprocess(self, item: Any, opts: dict[str, Any]) -> list[Feature]:
        raise NotImplementedError

    def forward(self, features: list[Feature], opts: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    def postprocess(self, item: Any, features: list[Feature], outputs: list[Any],
                    opts: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


def label_names(config) -> list[str]:
    """Class names from config.id2label, else LABEL_0, LABEL_1, ..."""
    id2label = config.id2label or {}
    return [id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels)]


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


def trim_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Character span [start, end) of `text` shrunk to exclude leading and trailing whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


_TASK_OF_HEAD = {
    "sequence-classification": "text-classification",
    "token-classification": "token-classification",
    "question-answering": "question-answering",
    "masked-lm": "fill-mask",
    "causal-lm": "text-generation",
    "seq2seq-lm": "summarization",
    "feature-extraction": "feature-extraction",
}


def task_for_model(model, recipe_task: str | None = None) -> str:
    """The pipeline task that fits a model's head (seq2seq -> summarization; encoder pretraining ->
    fill-mask); a fine-tuning recipe of "summarization" or "translation" picks that task."""
    if recipe_task in ("summarization", "translation") and model.task in ("seq2seq-lm", "causal-lm", "pretraining"):
        return recipe_task
    if model.task == "pretraining":
        return {"encoder": "fill-mask", "decoder": "text-generation"}.get(model.config.arch, "summarization")
    return _TASK_OF_HEAD.get(model.task, "feature-extraction")


def model_directory(path: str | Path) -> Path:
    """The model folder of `path`: itself when it holds config.json, else a run's best/ or final/."""
    folder = Path(path)
    for candidate in (folder, folder / "best", folder / "final"):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{folder}: no config.json here nor in {folder / 'best'} or {folder / 'final'} "
                            "(expected a model directory or a fine-tuning run)")


def recipe_task(model_dir: Path) -> str | None:
    """The task of the fine-tuning run a model folder belongs to (finetune.json beside or above it)."""
    for folder in (model_dir, model_dir.parent):
        path = folder / RECIPE_FILE
        if path.is_file():
            try:
                task = json.loads(path.read_text(encoding="utf-8")).get("task")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
                raise ValueError(f"{path}: not a valid recipe file: {e}") from None
            return task if isinstance(task, str) else None
    return None


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


__all__ = ["Feature", "Pipeline", "as_text", "as_text_pair", "label_names", "model_directory", "recipe_task",
           "resolve_dtype", "task_for_model", "trim_span"]
