"""Continued causal-LM training of a GPT-style decoder on domain text, with perplexity before
and after.

Text files are read with `plmkit.data.corpus.Corpus` (.txt: a blank line ends a document; .jsonl
/ .json / .csv / .tsv / .parquet: `text_column` names the field or column, else it is found by its
usual name; gzip too). Documents are
tokenized, joined with EOS between them and cut into blocks of `block_size` tokens (the
last, shorter block is kept). Dev metrics: mean token loss and perplexity = exp(loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from plmkit.config import ConfigError
from plmkit.data.corpus import Corpus
from plmkit.data.tokenizer import Tokenizer
from plmkit.infer.batching import eos_id, pad_id, position_limit, run_batches
from plmkit.metrics import perplexity
from plmkit.models import PretrainedModel
from plmkit.recipes.finetune_run import FinetuneResult, run_finetune
from plmkit.recipes.model_loading import load_model, load_tokenizer
from plmkit.recipes.tasks_base import EvalReport, FinetuneConfig, Recipe, parse_config, subsample
from plmkit.rundir import write_json

HEAD = "causal-lm"
METRICS = ("perplexity", "loss")


@dataclass
class LMConfig(FinetuneConfig):
    """Causal language modelling (see the module docstring)."""

    block_size: int = 256
    """Tokens per training row (capped by the model's positions)."""
    text_column: str | None = None
    """JSON field / CSV-TSV-Parquet column of the text; None = found by its name (text, content, ...)."""

    renamed: ClassVar[dict[str, str]] = {"text_field": "text_column"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size < 2:
            raise ConfigError(f"block_size must be at least 2, got {self.block_size}")


@dataclass(frozen=True)
class LMText:
    """One document of a corpus as one text (its sentences joined by newlines)."""

    text: str
    where: str
    """The corpus and the document's index in it (``PATH#3``)."""


def read_texts(cfg: LMConfig, path: str | Path, labeled: bool = True) -> list[LMText]:
    """The documents of a text corpus (a file, folder or glob), each as one text."""
    corpus = Corpus(path, field=cfg.text_column)
    return [LMText("\n".join(doc), f"{path}#{i}") for i, doc in enumerate(corpus)]


def text_ids(texts: list[LMText], tokenizer: Tokenizer, eos: int | None) -> list[list[int]]:
    """Each text's tokens (no special tokens), followed by EOS."""
    encodings = tokenizer.encode_batch([d.text for d in texts], add_special_tokens=False, truncation=False)
    return [enc.ids + ([eos] if eos is not None else []) for enc in encodings]


def token_blocks(ids: list[int], block_size: int) -> list[dict[str, Any]]:
    """Features ``input_ids, attention_mask, labels`` of consecutive block_size-token blocks of `ids`."""
    blocks = [ids[i: i + block_size] for i in range(0, len(ids), block_size)]
    return [{"input_ids": b, "attention_mask": [1] * len(b), "labels": b} for b in blocks if len(b) > 1]


def evaluate_lm(model: PretrainedModel, tokenizer: Tokenizer, cfg: LMConfig, documents: list[LMText]) -> EvalReport:
    """Loss and perplexity over all documents (each cut into its own blocks, scored in the shared
    length-sorted batches of `plmkit.infer.batching`); one row per document with its number of
    predicted tokens, loss and perplexity."""
    block = min(cfg.block_size, position_limit(model.config))
    owners, features = [], []
    for i, ids in enumerate(text_ids(documents, tokenizer, eos_id(tokenizer, model.config))):
        blocks = token_blocks(ids, block)
        owners += [i] * len(blocks)
        features += blocks
    sums = run_batches(model, features, cfg.eval_batch_size, pad_id(tokenizer, model.config), _row_loss_sums)
    totals = [[0.0, 0] for _ in documents]
    for owner, (loss_sum, count) in zip(owners, sums):
        totals[owner][0] += loss_sum
        totals[owner][1] += count
    rows = [{"where": d.where, "tokens": n, "loss": s / n if n else math.nan,
             "perplexity": perplexity(s / n) if n else math.nan} for d, (s, n) in zip(documents, totals)]
    count = sum(n for _, n in totals)
    loss = sum(s for s, _ in totals) / count if count else math.nan
    return EvalReport({"loss": loss, "perplexity": perplexity(loss)}, rows)


def _row_loss_sums(out: Any, batch: dict[str, torch.Tensor]) -> list[tuple[float, int]]:
    """(summed next-token loss, predicted tokens) of each row; logits (B, T, V), labels (B, T)."""
    logits, labels = out.logits[:, :-1].float(), batch["labels"][:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")  # (B, T-1)
    counts = (labels != -100).sum(dim=1)
    return list(zip(losses.sum(dim=1).tolist(), counts.tolist()))


def finetune_lm(cfg: LMConfig | dict[str, Any] | None = None, **fields: Any) -> FinetuneResult:
    """Continue training a decoder on text; fields as in `LMConfig`. The result's ``extra``
    holds the dev perplexity before and after (also in out/perplexity.json).

        finetune_lm(model="runs/gpt", train_file="domain/train.txt", dev_file="domain/dev.txt", out="runs/gpt-dom")
    """
    cfg = parse_config(LMConfig, cfg, **fields)
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, HEAD, tokenizer)
    if model.config.arch != "decoder":
        raise ValueError(f"--model {cfg.model} is an {model.config.arch}; lm fine-tuning needs a decoder (GPT)")
    block = min(cfg.block_size, position_limit(model.config))
    documents = subsample(read_texts(cfg, cfg.train_file), cfg.max_train_examples, cfg.train_fraction,
                          cfg.train.seed)
    features = token_blocks([t for ids in text_ids(documents, tokenizer, eos_id(tokenizer, model.config))
                             for t in ids], block)
    dev = subsample(read_texts(cfg, cfg.dev_file), cfg.max_dev_examples) if cfg.dev_file else []

    def evaluator(m: PretrainedModel) -> EvalReport:
        return evaluate_lm(m, tokenizer, cfg, dev)

    before = evaluator(model).metrics if dev else {}
    result = run_finetune("lm", cfg, model, tokenizer, features, evaluator if dev else None, METRICS,
                          pipeline_options(cfg))
    if dev:
        result.extra = {"before": before, "after": result.dev_metrics}
        write_json(Path(cfg.out) / "perplexity.json", result.extra)
    return result


def pipeline_options(cfg: LMConfig) -> dict[str, Any]:
    """The text-generation pipeline takes no settings from an LM run."""
    return {}


RECIPE = Recipe("lm", LMConfig, finetune_lm, read_texts, evaluate_lm, pipeline_options)
