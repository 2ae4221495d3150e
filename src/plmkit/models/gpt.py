"""Decoders (GPT-2 style): causal LM with a tied head and a KV cache; last-token classification.

Shapes: B batch, T length, C hidden, V vocabulary, K classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plmkit.config import ModelConfig
from plmkit.models.base import ModelOutput, PretrainedModel, classification_loss, linear_cross_entropy, lm_loss
from plmkit.models.layers import KVCache, Transformer


class GPTModel(PretrainedModel):
    """Causal backbone only: hidden states (B, T, C)."""

    task = "feature-extraction"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.transformer = Transformer(config, causal=True)
        if type(self) is GPTModel:
            self.init_weights()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                segment_ids: Tensor | None = None, cache: KVCache | None = None) -> ModelOutput:
        return ModelOutput(hidden_states=self.transformer(input_ids, attention_mask, None, position_ids, segment_ids, cache))


class GPTForCausalLM(GPTModel):
    """Next-token prediction. labels are aligned with input_ids and shifted here (as in HF).

    `last_only=True` projects only the last position to the vocabulary (generation prefill).
    """

    task = "causal-lm"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.init_weights()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.transformer.emb.tok.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                segment_ids: Tensor | None = None, cache: KVCache | None = None, labels: Tensor | None = None,
                last_only: bool = False) -> ModelOutput:
        h = self.transformer(input_ids, attention_mask, None, position_ids, segment_ids, cache)  # (B, T, C)
        if last_only:
            h = h[:, -1:].contiguous()  # contiguous: a strided slice makes bf16 matmul copy the weight
        # Shift the labels, not the logits: slicing (B, T, V) logits would copy them (and their gradient).
        shifted = None if labels is None else F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): t predicts t + 1
        if shifted is not None and self.loss_chunk and self.training:  # no logits (see PretrainedModel.loss_chunk)
            out = ModelOutput(hidden_states=h)
            out.loss, out.n_targets = linear_cross_entropy(h, self.lm_head.weight, None, shifted, self.loss_chunk)
            return out
        out = ModelOutput(logits=self.lm_head(h), hidden_states=h)  # (B, T, V)
        if shifted is not None:
            out.loss, out.n_targets = lm_loss(out.logits, shifted)
        return out


class GPTForSequenceClassification(GPTModel):
    """Classify from the last real token of each row (either padding side); logits (B, K)."""

    task = "sequence-classification"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.init_weights()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                segment_ids: Tensor | None = None, labels: Tensor | None = None) -> ModelOutput:
        h = self.transformer(input_ids, attention_mask, None, position_ids, segment_ids)
        if attention_mask is None:
            last = torch.full((h.size(0),), h.size(1) - 1, device=h.device)
        else:
            idx = torch.arange(h.size(1), device=h.device)
            last = (attention_mask.long() * idx).argmax(dim=1)  # (B,) index of the last real token
        logits = self.score(h[torch.arange(h.size(0), device=h.device), last])  # (B, K)
        out = ModelOutput(logits=logits, hidden_states=h)
        if labels is not None:
            out.loss = classification_loss(logits, labels, self.config, self.class_weights)
            out.n_targets = torch.tensor(labels.size(0))
        return out
