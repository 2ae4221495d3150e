"""Encoders (BERT, RoBERTa, ALBERT) and their task heads, each head beside the backbone.

Shapes: B batch, T length, C hidden, E embedding size, V vocabulary, K classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plmkit.config import ModelConfig
from plmkit.models.base import (ModelOutput, PretrainedModel, classification_loss, label_rows, linear_cross_entropy,
                                lm_loss)
from plmkit.models.layers import Dropout, Transformer, activation


class MLMHead(nn.Module):
    """Transform (dense, activation, LayerNorm) then project to the vocabulary (tied to the embeddings)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        e = config.embedding_size or config.hidden_size
        self.dense = nn.Linear(config.hidden_size, e)
        self.act = activation(config.activation)
        self.norm = nn.LayerNorm(e, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(e, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def transform(self, h: Tensor) -> Tensor:
        """h (..., C) -> (..., E): what the vocabulary projection reads."""
        return self.norm(self.act(self.dense(h)))

    def forward(self, h: Tensor) -> Tensor:
        """h (..., C) -> logits (..., V)."""
        return F.linear(self.transform(h), self.decoder.weight, self.bias)


class Pooler(nn.Module):
    """tanh(dense(h[CLS])): the sentence vector of BERT's NSP and classification heads.

    ELECTRA's classification head has the same shape with GELU in place of tanh.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = nn.GELU() if config.family == "electra" else nn.Tanh()

    def forward(self, h: Tensor) -> Tensor:
        return self.act(self.dense(h[:, 0]))  # (B, C)


class EncoderModel(PretrainedModel):
    """Backbone only: hidden states (B, T, C); the base of every encoder head.

    Used on its own it keeps BERT's pooler, so that HF `BertModel` checkpoints round-trip
    (ELECTRA's backbone has none).
    """

    task = "feature-extraction"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.transformer = Transformer(config, causal=False)
        if type(self) is EncoderModel:  # heads initialize once, after adding their layers
            self.pooler = Pooler(config) if config.family != "electra" else None
            self.init_weights()

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
               position_ids: Tensor | None = None, segment_ids: Tensor | None = None) -> Tensor:
        return self.transformer(input_ids, attention_mask, token_type_ids, position_ids, segment_ids)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, segment_ids: Tensor | None = None) -> ModelOutput:
        h = self.encode(input_ids, attention_mask, token_type_ids, position_ids, segment_ids)
        return ModelOutput(hidden_states=h)


class EncoderForMaskedLM(EncoderModel):
    """Masked LM, plus next-sentence (BERT) or sentence-order (ALBERT) prediction for "pretraining".

    With labels, the vocabulary projection runs only at masked positions (labels != -100):
    logits are then (N_masked, V) instead of (B, T, V).
    """

    task = "masked-lm"
    sentence_head = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.mlm = MLMHead(config)
        with_sentence = self.sentence_head and config.family != "roberta"
        self.pooler = Pooler(config) if with_sentence else None
        self.nsp = nn.Linear(config.hidden_size, 2) if with_sentence else None
        self.init_weights()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.mlm.decoder.weight = self.transformer.emb.tok.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, segment_ids: Tensor | None = None, labels: Tensor | None = None,
                next_sentence_label: Tensor | None = None) -> ModelOutput:
        h = self.encode(input_ids, attention_mask, token_type_ids, position_ids, segment_ids)
        out = ModelOutput(hidden_states=h)
        if labels is None:
            out.logits = self.mlm(h)  # (B, T, V)
        else:  # the masked positions first, as rows of a count rounded up (see label_rows)
            rows, n = label_rows(labels)
            masked, targets = h.reshape(-1, h.size(-1))[rows], labels.reshape(-1)[rows]
            if self.loss_chunk and self.training:  # no logits: the loss in chunks (see PretrainedModel.loss_chunk)
                out.mlm_loss, out.n_targets = linear_cross_entropy(self.mlm.transform(masked), self.mlm.decoder.weight,
                                                                   self.mlm.bias, targets, self.loss_chunk)
            else:
                out.logits = self.mlm(masked)[:n]  # (N_masked, V)
                out.mlm_loss, out.n_targets = lm_loss(out.logits, targets[:n])
            out.loss = out.mlm_loss
        if self.nsp is not None:
            out.seq_logits = self.nsp(self.pooler(h))  # (B, 2)
            if next_sentence_label is not None:
                out.seq_loss = F.cross_entropy(out.seq_logits.float(), next_sentence_label.view(-1))
                out.loss = out.seq_loss if out.loss is None else out.loss + out.seq_loss
        return out


class EncoderForPretraining(EncoderForMaskedLM):
    """MLM + NSP (BERT) / SOP (ALBERT); RoBERTa pretrains with MLM alone."""

    task = "pretraining"
    sentence_head = True


class EncoderForSequenceClassification(EncoderModel):
    """[CLS] -> pooler -> dropout -> classifier: single sentences or pairs; logits (B, K)."""

    task = "sequence-classification"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.pooler = Pooler(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.dropout
        self.drop = Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, segment_ids: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        h = self.encode(input_ids, attention_mask, token_type_ids, position_ids, segment_ids)
        logits = self.classifier(self.drop(self.pooler(h)))  # (B, K)
        out = ModelOutput(logits=logits, hidden_states=h)
        if labels is not None:
            out.loss = classification_loss(logits, labels, self.config, self.class_weights)
            out.n_targets = torch.tensor(labels.size(0))
        return out


class EncoderForTokenClassification(EncoderModel):
    """One label per token (NER); logits (B, T, K); labels -100 are ignored."""

    task = "token-classification"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.dropout
        self.drop = Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, segment_ids: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        h = self.encode(input_ids, attention_mask, token_type_ids, position_ids, segment_ids)
        logits = self.classifier(self.drop(h))  # (B, T, K)
        out = ModelOutput(logits=logits, hidden_states=h)
        if labels is not None:
            out.loss = classification_loss(logits, labels, self.config, self.class_weights)
            out.n_targets = (labels != -100).sum()
        return out


class EncoderForQuestionAnswering(EncoderModel):
    """Extractive QA: start and end logits (B, T) over the tokens of question + context."""

    task = "question-answering"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, segment_ids: Tensor | None = None,
                start_positions: Tensor | None = None, end_positions: Tensor | None = None) -> ModelOutput:
        h = self.encode(input_ids, attention_mask, token_type_ids, position_ids, segment_ids)
        start, end = self.qa_outputs(h).unbind(dim=-1)  # (B, T) each
        out = ModelOutput(start_logits=start, end_logits=end, hidden_states=h)
        if start_positions is not None and end_positions is not None:
            t = start.size(1)  # positions outside the window are ignored, as in the reference
            s, e = start_positions.clamp(0, t), end_positions.clamp(0, t)
            out.loss = (F.cross_entropy(start.float(), s, ignore_index=t) + F.cross_entropy(end.float(), e, ignore_index=t)) / 2
            out.n_targets = torch.tensor(start.size(0))
        return out
