"""Which class builds a model: one per (shape, head), and the families whose head differs.

Its own module (not the package's ``__init__``), so that `plmkit.models.checkpoint_io` and
anything else inside the package can import `build_model` at the top without a cycle.
"""

from __future__ import annotations

from plmkit.config import ConfigError, ModelConfig
from plmkit.models.base import PretrainedModel
from plmkit.models.bert import (
    EncoderForMaskedLM,
    EncoderForPretraining,
    EncoderForQuestionAnswering,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
)
from plmkit.models.electra import ElectraForPretraining
from plmkit.models.encoder_decoder import Seq2SeqLM
from plmkit.models.gpt import GPTForCausalLM, GPTForSequenceClassification, GPTModel

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
"""The class of each (arch, head); the heads are those of `plmkit.heads.HEADS`."""

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


__all__ = ["FAMILY_MODELS", "MODELS", "TASKS", "build_model"]
