"""plmkit models: one set of layers in three shapes, with task heads.

    build_model(config, task)  a fresh, randomly initialized model
    load(directory, task=None) a plmkit or Hugging Face checkpoint directory
"""

from __future__ import annotations

from pathlib import Path

from plmkit.config import ConfigError, ModelConfig
from plmkit.models.base import ModelOutput, PretrainedModel
from plmkit.models.bert import (
    EncoderForMaskedLM,
    EncoderForPretraining,
    EncoderForQuestionAnswering,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
)
from plmkit.models.checkpoint_io import load_model, read_config, save_model
from plmkit.models.electra import ElectraForPretraining
from plmkit.models.encoder_decoder import Seq2SeqLM
from plmkit.models.gpt import GPTForCausalLM, GPTForSequenceClassification, GPTModel
from plmkit.models.layers import KVCache

MODELS: dict[tuple[str, str], type[PretrainedModel]] = {
    ("encoder", "pretraining"): EncoderForPretraining,
    ("encoder", "masked-lm"): EncoderForMaskedLM,
    ("encoder", "sequence-classification"): EncoderForSequenceClassification,
    ("encoder", "token-classification"): EncoderForTokenClassification,
    ("encoder", "question-answering"): EncoderForQuestionAnswering,
    ("encoder", "feature-extraction"): EncoderModel,
    ("decoder", "causal-lm"): GPTForCausalLM,
    ("decoder", "pretraining"): GPTForCausalLM,
    ("decoder", "sequence-classification"): GPTForSequenceClassification,
    ("decoder", "feature-extraction"): GPTModel,
    ("encoder-decoder", "seq2seq-lm"): Seq2SeqLM,
    ("encoder-decoder", "pretraining"): Seq2SeqLM,
}

FAMILY_MODELS: dict[tuple[str, str], type[PretrainedModel]] = {
    ("electra", "pretraining"): ElectraForPretraining,
}
"""Where a family's head differs from its shape's (ELECTRA pretrains a generator and a discriminator)."""

TASKS = sorted({task for _, task in MODELS})


def build_model(config: ModelConfig, task: str) -> PretrainedModel:
    """A randomly initialized model of `config`'s shape with the head for `task`.

    "pretraining" means each shape's own objective: MLM+NSP (BERT), MLM+SOP (ALBERT),
    MLM (RoBERTa), replaced-token detection (ELECTRA), next-token (GPT), denoising (seq2seq).
    """
    cls = FAMILY_MODELS.get((config.family, task)) or MODELS.get((config.arch, task))
    if cls is None:
        valid = [t for a, t in MODELS if a == config.arch]
        raise ConfigError(f"task {task!r} is not available for a {config.arch}; choose from {', '.join(valid)}")
    return cls(config)


def load(directory: str | Path, task: str | None = None, **overrides) -> PretrainedModel:
    """Load any plmkit or Hugging Face (BERT, RoBERTa, ALBERT, ELECTRA, GPT-2) checkpoint directory."""
    return load_model(directory, task=task, **overrides)


__all__ = [
    "KVCache",
    "MODELS",
    "ModelOutput",
    "PretrainedModel",
    "TASKS",
    "build_model",
    "load",
    "read_config",
    "save_model",
]
