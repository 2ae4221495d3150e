"""Summarization and translation: text-to-text pairs on an encoder-decoder or a GPT-style decoder.

The model may be
- an encoder-decoder preset (from scratch) or a plmkit seq2seq checkpoint;
- a BERT-style encoder checkpoint with ``warm_start``: its weights start both stacks of an
  encoder-decoder (cross-attention starts fresh); with ``from_scratch`` the same
  encoder-decoder starts from random weights (the baseline that shows what the warm start buys);
- a decoder (GPT): trained on ``source + separator + target + EOS`` with the loss on the
  target only, and asked to continue ``source + separator`` at evaluation.

Data: JSON Lines (`source_column` / `target_column` keys; several target keys or a list give
several references), CSV/TSV columns, or line-aligned parallel files ``PATH.SRC[.gz]`` /
``PATH.TGT[.gz]`` with `source_lang` / `target_lang` (Multi30k: ``--train multi30k/train
--set source_lang=en --set target_lang=de``). Dev evaluation generates in batches and scores
ROUGE-1/2/L (characters for Chinese, in [0, 1]), BLEU and chrF (sacrebleu, in [0, 100]), plus
the teacher-forced loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from plmkit.config import ConfigError, ModelConfig, from_dict
from plmkit.data.io import detect_format, read_table, text_lines
from plmkit.data.tasks import (
    MissingColumnError, Seq2SeqExample, encode_causal_lm, encode_seq2seq, read_parallel, read_seq2seq_jsonl,
    read_seq2seq_table,
)
from plmkit.data.tokenizer import Tokenizer
from plmkit.infer.batching import eos_id, mean_loss, pad_id, position_limit, special_ids
from plmkit.metrics import bleu, chrf, rouge
from plmkit.models import PretrainedModel, Seq2SeqLM, build_model, load, read_config
from plmkit.recipes.finetune_run import FinetuneResult, run_finetune
from plmkit.recipes.model_loading import load_model, load_tokenizer, source_config
from plmkit.recipes.tasks_base import (
    EvalReport, FinetuneConfig, Recipe, parse_config, predict, subsample, task_pipeline,
)

SUMMARIZATION_METRICS = ("rougeL", "rouge1", "rouge2", "bleu", "chrf", "loss")
TRANSLATION_METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "loss")


@dataclass
class Seq2SeqConfig(FinetuneConfig):
    """Summarization / translation (see the module docstring)."""

    kind: Literal["summarization", "translation"] = "summarization"
    """Sets the default dev metric: rougeL (summarization) or bleu (translation)."""
    source_column: str | int = "source"
    """JSON key or CSV/TSV column of the source text (a list of texts is joined with spaces)."""
    target_column: str | int | list[str] = "target"
    """JSON key(s) or CSV/TSV column of the reference(s); the first reference is the training target."""
    format: Literal["jsonl", "csv", "tsv"] | None = None
    """File format; None = from the suffix (parallel files: set source_lang and target_lang)."""
    header: bool = False
    """CSV/TSV files start with a header row."""
    source_lang: str | None = None
    """Parallel files: read PATH.SOURCE_LANG (or PATH.SOURCE_LANG.gz) as sources."""
    target_lang: str | None = None
    """Parallel files: read PATH.TARGET_LANG (or .gz) as targets."""
    warm_start: bool = False
    """Build an encoder-decoder from an encoder (BERT) checkpoint's weights."""
    max_source_length: int = 512
    """Source tokens (special tokens included)."""
    max_target_length: int = 128
    """Target tokens (EOS included)."""
    separator: str = "\n"
    """Decoder-only models: text between source and target."""
    language: Literal["en", "zh"] = "en"
    """Target language: Chinese is scored by characters (ROUGE) and sacrebleu's zh tokenizer (BLEU)."""
    num_beams: int = 1
    """Beam width at evaluation (1 = greedy)."""
    no_repeat_ngram_size: int = 0
    """At evaluation, never generate an n-gram of this size twice (3 is usual for summaries); 0 = off."""
    max_new_tokens: int | None = None
    """Longest generated output; None = max_target_length."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.source_lang is None) != (self.target_lang is None):
            raise ConfigError("parallel files need both source_lang and target_lang")
        if self.max_source_length < 2 or self.max_target_length < 2:
            raise ConfigError("max_source_length and max_target_length must be at least 2")
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.no_repeat_ngram_size < 0:
            raise ConfigError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")

    @property
    def metrics(self) -> tuple[str, ...]:
        return TRANSLATION_METRICS if self.kind == "translation" else SUMMARIZATION_METRICS


# --------------------------------------------------------------------------- data


def read_pairs(cfg: Seq2SeqConfig, path: str | Path, labeled: bool = True) -> list[Seq2SeqExample]:
    """Examples of a seq2seq file (parallel pair); with labeled=False, sources alone are accepted
    (their references are empty)."""
    if cfg.source_lang is not None:
        source = _language_file(path, cfg.source_lang)
        target = _language_file(path, cfg.target_lang, required=labeled)  # type: ignore[arg-type]
        examples = read_parallel(source, target) if target else _sources(cfg, source)
    else:
        try:
            examples = _read_table_pairs(cfg, path)
        except MissingColumnError:
            if labeled:
                raise
            examples = _sources(cfg, path)
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def _language_file(path: str | Path, lang: str, required: bool = True) -> Path | None:
    for candidate in (Path(f"{path}.{lang}"), Path(f"{path}.{lang}.gz")):
        if candidate.is_file():
            return candidate
    if required:
        raise FileNotFoundError(f"no such file: {path}.{lang} (nor {path}.{lang}.gz)")
    return None


def _read_table_pairs(cfg: Seq2SeqConfig, path: str | Path) -> list[Seq2SeqExample]:
    fmt = cfg.format or detect_format(path)
    if fmt in ("jsonl", "json"):
        if not isinstance(cfg.source_column, str):
            raise ConfigError("source_column must be a JSON key (a string) for JSON Lines")
        targets = cfg.target_column if isinstance(cfg.target_column, list) else str(cfg.target_column)
        return read_seq2seq_jsonl(path, cfg.source_column, targets)
    if isinstance(cfg.target_column, list):
        raise ConfigError("several target columns are supported for JSON Lines only")
    return read_seq2seq_table(path, cfg.source_column, cfg.target_column, fmt=fmt, header=cfg.header)


def _sources(cfg: Seq2SeqConfig, path: str | Path) -> list[Seq2SeqExample]:
    """Sources without references (prediction input)."""
    if cfg.source_lang is not None:
        rows: Any = ((n, [line]) for n, line in text_lines(path))
    else:  # a .txt file: one source per line
        fmt = cfg.format or detect_format(path)
        rows = read_table(path, [0 if fmt == "txt" else cfg.source_column], fmt=fmt, header=cfg.header)
    out = []
    for line, (value,) in rows:
        text = " ".join(value) if isinstance(value, list) else str(value)
        out.append(Seq2SeqExample(text.strip(), (), f"{path}:{line}"))
    return out


# --------------------------------------------------------------------------- model


def load_seq2seq_model(cfg: Seq2SeqConfig, tokenizer: Tokenizer) -> PretrainedModel:
    """An encoder-decoder (from a preset, a seq2seq checkpoint or a warm-started encoder) or a decoder."""
    arch = source_config(cfg.model).arch
    if arch == "decoder":
        return load_model(cfg, "causal-lm", tokenizer)
    if arch == "encoder-decoder":
        return load_model(cfg, "seq2seq-lm", tokenizer)
    if not (cfg.warm_start and Path(cfg.model).is_dir()):
        raise ValueError(f"--model {cfg.model} is an encoder: pass --warm-start (with a checkpoint directory) to "
                         "build an encoder-decoder from its weights, or use a seq2seq / GPT model")
    torch.manual_seed(cfg.train.seed)  # the fresh weights (cross-attention; everything with from_scratch)
    if cfg.from_scratch:  # the same encoder-decoder with random weights: the baseline of a warm start
        encoder = build_model(read_config(cfg.model)[0], "feature-extraction")
    else:
        encoder = load(cfg.model, task="feature-extraction")
    ids = special_ids(tokenizer)
    fields = {**encoder.config.to_dict(), "arch": "encoder-decoder", "family": "seq2seq", "id2label": None,
              **ids, "decoder_start_token_id": ids["bos_token_id"], **cfg.model_overrides}
    return Seq2SeqLM.from_encoder(encoder, from_dict(ModelConfig, fields, "model"))


def _lengths(cfg: Seq2SeqConfig, model: PretrainedModel) -> tuple[int, int]:
    """(source, target) token limits within the model's positions."""
    limit = position_limit(model.config)
    return min(cfg.max_source_length, limit), min(cfg.max_target_length, limit - 1)


def encode_pairs(cfg: Seq2SeqConfig, model: PretrainedModel, tokenizer: Tokenizer,
                 examples: list[Seq2SeqExample]) -> list[dict[str, Any]]:
    """Training features for the model's shape (decoder-only: loss on the target only)."""
    source_len, target_len = _lengths(cfg, model)
    eos = eos_id(tokenizer, model.config)
    if model.config.arch == "decoder":
        total = min(source_len + target_len, position_limit(model.config))
        return encode_causal_lm(examples, tokenizer, max_length=total, max_target_length=target_len,
                                separator=cfg.separator, eos_id=eos)
    return encode_seq2seq(examples, tokenizer, max_source_length=source_len, max_target_length=target_len,
                          eos_id=eos)


def pipeline_options(cfg: Seq2SeqConfig) -> dict[str, Any]:
    """The summarization / translation pipeline's options for this config (greedy or beam search,
    up to max_new_tokens, else max_target_length, new tokens)."""
    return {"max_source_length": cfg.max_source_length, "separator": cfg.separator,
            "max_new_tokens": cfg.max_new_tokens or cfg.max_target_length, "num_beams": cfg.num_beams,
            "no_repeat_ngram_size": cfg.no_repeat_ngram_size}


def evaluate_seq2seq(model: PretrainedModel, tokenizer: Tokenizer, cfg: Seq2SeqConfig,
                     examples: list[Seq2SeqExample]) -> EvalReport:
    """Generate an output per example (the summarization / translation pipeline); ROUGE / BLEU /
    chrF / teacher-forced loss against the references."""
    pipe = task_pipeline(cfg.kind, model, tokenizer, cfg, pipeline_options(cfg))
    results = predict(pipe, [e.source for e in examples], [e.where for e in examples])
    hypotheses = [r[pipe.result_key] for r in results]  # type: ignore[attr-defined]
    rows: list[dict[str, Any]] = [{"source": e.source, "prediction": h} for e, h in zip(examples, hypotheses)]
    if not all(e.references for e in examples):
        return EvalReport({}, rows)
    references = [list(e.references) for e in examples]
    for row, refs in zip(rows, references):
        row["references"] = refs
    metrics = {k: float(v) for k, v in rouge(hypotheses, references, language=cfg.language).items()}
    metrics["bleu"] = bleu(hypotheses, references, language=cfg.language)
    metrics["chrf"] = chrf(hypotheses, references)
    features = encode_pairs(cfg, model, tokenizer, examples)
    metrics["loss"] = mean_loss(model, features, cfg.eval_batch_size, pad_id(tokenizer, model.config))
    return EvalReport(metrics, rows)


def finetune_seq2seq(cfg: Seq2SeqConfig | dict[str, Any] | None = None, **fields: Any) -> FinetuneResult:
    """Fine-tune for summarization or translation; fields as in `Seq2SeqConfig`.

        finetune_seq2seq(model="seq2seq-small", tokenizer="tok/", train_file="scitldr-a/train.jsonl",
                         dev_file="scitldr-a/dev.jsonl", out="runs/tldr")
    """
    cfg = parse_config(Seq2SeqConfig, cfg, **fields)
    tokenizer = load_tokenizer(cfg)
    pairs = subsample(read_pairs(cfg, cfg.train_file), cfg.max_train_examples, cfg.train_fraction, cfg.train.seed)
    model = load_seq2seq_model(cfg, tokenizer)
    features = encode_pairs(cfg, model, tokenizer, pairs)
    dev = subsample(read_pairs(cfg, cfg.dev_file), cfg.max_dev_examples) if cfg.dev_file else []

    def evaluator(m: PretrainedModel) -> EvalReport:
        return evaluate_seq2seq(m, tokenizer, cfg, dev)

    return run_finetune(cfg.kind, cfg, model, tokenizer, features, evaluator if dev else None, cfg.metrics,
                        pipeline_options(cfg))


def _finetune_translation(cfg: Seq2SeqConfig | dict[str, Any] | None = None, **fields: Any) -> FinetuneResult:
    if not isinstance(cfg, Seq2SeqConfig):
        fields = {"kind": "translation", **dict(cfg or {}), **fields}
        cfg = None
    return finetune_seq2seq(cfg, **fields)


SUMMARIZATION = Recipe("summarization", Seq2SeqConfig, finetune_seq2seq, read_pairs, evaluate_seq2seq,
                       pipeline_options, text_column="source_column",
                       requires=("sacrebleu", "rouge_score.rouge_scorer"))
TRANSLATION = Recipe("translation", Seq2SeqConfig, _finetune_translation, read_pairs, evaluate_seq2seq,
                     pipeline_options, text_column="source_column", requires=("sacrebleu", "rouge_score.rouge_scorer"))
