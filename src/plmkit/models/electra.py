"""ELECTRA pretraining: replaced-token detection (Clark et al., 2020).

A small generator (a masked LM) fills the masked positions of the input with tokens sampled
from its own predictions; the discriminator (the model that fine-tuning keeps) reads the
result and classifies every token as original or replaced. Every position carries a loss,
not only the 15% masked ones, which is what makes ELECTRA sample-efficient at small compute.

    loss = MLM_generator + rtd_weight * BCE(discriminator logits, replaced)

The generator has the discriminator's depth and `config.generator_size` of its width (hidden
size, feed-forward size, heads) and shares its token, position and token-type embeddings and
their LayerNorm; each model projects the shared embeddings to its own width when they differ.
No gradient flows through the sampling: the discriminator sees token ids.

In Hugging Face terms the discriminator is `ElectraForPreTraining` and the generator
`ElectraForMaskedLM`; a saved model folder holds the first, and the second in `generator/`.

Shapes: B batch, T length, C hidden, N masked positions, V vocabulary.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plmkit.config import ModelConfig
from plmkit.models.base import ModelOutput
from plmkit.models.bert import EncoderForMaskedLM, EncoderModel
from plmkit.models.layers import activation

GENERATOR_DIR = "generator"
"""Subfolder of a saved ELECTRA pretraining model that holds the generator."""


def generator_config(config: ModelConfig) -> ModelConfig:
    """The generator's shape: `generator_size` of the discriminator's width (at least one 64-wide
    head), the same depth, and embeddings of the discriminator's embedding size."""
    hidden = max(16, int(round(config.hidden_size * config.generator_size)))
    heads = max(1, min(config.num_heads, hidden // 64)) if hidden >= 64 else 1
    while hidden % heads:
        heads -= 1
    return dataclasses.replace(
        config, hidden_size=hidden, num_heads=heads,
        intermediate_size=max(1, int(round(config.intermediate_size * config.generator_size))),
        embedding_size=config.embedding_size or config.hidden_size)


class ReplacedTokenHead(nn.Module):
    """dense -> activation -> one logit per token: > 0 means "replaced"."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.activation)
        self.out = nn.Linear(config.hidden_size, 1)

    def forward(self, h: Tensor) -> Tensor:
        """h (..., C) -> logits (...)."""
        return self.out(self.act(self.dense(h))).squeeze(-1)


class ElectraForPretraining(EncoderModel):
    """The discriminator (this model's backbone and `rtd` head) and its generator.

    Without `labels` the forward pass is the discriminator alone on the given ids, as
    `ElectraForPreTraining` computes it: logits (B, T). With MLM `labels` (the masked positions'
    original ids, -100 elsewhere; `input_ids` holding the masked text) it runs the whole ELECTRA
    step and returns the combined loss, the generator's MLM loss (`mlm_loss`, with its logits in
    `generator_logits`), the RTD loss (`seq_loss`) and the discriminator's logits (B, T) on the
    corrupted text, whose targets are in `replaced` (B, T).
    """

    task = "pretraining"
    companions = {"generator": GENERATOR_DIR}

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.rtd = ReplacedTokenHead(config)
        self.generator = EncoderForMaskedLM(generator_config(config))
        self.init_weights()

    def tie_weights(self) -> None:
        """The generator uses the discriminator's embedding tables (and ties its MLM output to them)."""
        ours, theirs = self.transformer.emb, self.generator.transformer.emb
        theirs.tok, theirs.pos, theirs.token_type, theirs.norm = ours.tok, ours.pos, ours.token_type, ours.norm
        self.generator.tie_weights()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, segment_ids: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        if labels is None:
            h = self.encode(input_ids, attention_mask, token_type_ids, position_ids, segment_ids)
            return ModelOutput(logits=self.rtd(h), hidden_states=h)
        gen = self.generator(input_ids, attention_mask, token_type_ids, position_ids, segment_ids, labels=labels)
        picked = labels != -100  # (B, T)
        corrupted = input_ids.masked_scatter(picked, sample_tokens(gen.logits))
        original = torch.where(picked, labels, input_ids)
        replaced = corrupted != original  # (B, T): a sampled token equal to the original counts as original
        h = self.encode(corrupted, attention_mask, token_type_ids, position_ids, segment_ids)
        logits = self.rtd(h)  # (B, T)
        real = attention_mask.bool() if attention_mask is not None else torch.ones_like(picked)
        rtd_loss = F.binary_cross_entropy_with_logits(logits[real].float(), replaced[real].float())
        loss = gen.mlm_loss + self.config.rtd_weight * rtd_loss
        return ModelOutput(loss=loss, n_targets=real.sum(), logits=logits, hidden_states=h, mlm_loss=gen.mlm_loss,
                           rtd_loss=rtd_loss, generator_logits=gen.logits, replaced=replaced)


def sample_tokens(logits: Tensor) -> Tensor:
    """One token per row of logits (N, V), drawn from softmax(logits) by the Gumbel-max trick.

    Runs without gradient: the discriminator's loss never reaches the generator through it.
    """
    with torch.no_grad():
        u = torch.rand(logits.shape, device=logits.device, dtype=torch.float32).clamp_min(1e-9)
        gumbel = -torch.log((-torch.log(u)).clamp_min(1e-9))  # (N, V) standard Gumbel noise
        return (logits.detach().float() + gumbel).argmax(dim=-1)  # (N,)
