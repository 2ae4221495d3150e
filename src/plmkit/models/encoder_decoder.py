"""Encoder-decoder (seq2seq) for summarization and translation.

The encoder is the bidirectional stack of `bert.py`'s models, the decoder a causal stack with
cross-attention; both share one token embedding, and the LM head is tied to it.
Shapes: B batch, S source length, T target length, C hidden, V vocabulary.
"""

from __future__ import annotations

from torch import Tensor, nn

from plmkit.config import ModelConfig
from plmkit.models.base import ModelOutput, PretrainedModel, lm_loss
from plmkit.models.layers import KVCache, Transformer


def shift_right(labels: Tensor, start_id: int, pad_id: int) -> Tensor:
    """Decoder inputs from labels (B, T): [start, y0, ..., y_{T-2}], with -100 replaced by pad."""
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start_id
    return shifted.masked_fill(shifted == -100, pad_id)


class Seq2SeqLM(PretrainedModel):
    """Encoder-decoder language model. Labels are the target tokens; decoder inputs are shifted from them."""

    task = "seq2seq-lm"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.encoder = Transformer(config, causal=False)
        self.decoder = Transformer(config, causal=True, cross=True, num_layers=config.decoder_layers)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.init_weights()

    def tie_weights(self) -> None:
        self.decoder.emb.tok.weight = self.encoder.emb.tok.weight
        if self.config.tie_embeddings:
            self.lm_head.weight = self.encoder.emb.tok.weight

    @property
    def decoder_start_id(self) -> int:
        c = self.config
        for candidate in (c.decoder_start_token_id, c.bos_token_id, c.pad_token_id):
            if candidate is not None:
                return candidate
        return 0

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Source (B, S) -> memory (B, S, C)."""
        return self.encoder(input_ids, attention_mask)

    def decode(self, decoder_input_ids: Tensor, memory: Tensor, memory_mask: Tensor | None = None,
               decoder_attention_mask: Tensor | None = None, cache: KVCache | None = None,
               last_only: bool = False) -> Tensor:
        """Target prefix (B, T) attending to memory (B, S, C) -> logits (B, T, V) (or (B, 1, V))."""
        h = self.decoder(decoder_input_ids, decoder_attention_mask, cache=cache, memory=memory, memory_mask=memory_mask)
        if last_only:
            h = h[:, -1:].contiguous()
        return self.lm_head(h)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                decoder_input_ids: Tensor | None = None, decoder_attention_mask: Tensor | None = None,
                labels: Tensor | None = None, cache: KVCache | None = None,
                memory: Tensor | None = None) -> ModelOutput:
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("Seq2SeqLM needs decoder_input_ids or labels")
            decoder_input_ids = shift_right(labels, self.decoder_start_id, self.config.pad_token_id)
        if memory is None:
            memory = self.encode(input_ids, attention_mask)
        logits = self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask, cache)
        out = ModelOutput(logits=logits, hidden_states=memory)
        if labels is not None:
            out.loss, out.n_targets = lm_loss(logits, labels)
        return out

    @classmethod
    def from_encoder(cls, encoder_model: PretrainedModel, config: ModelConfig | None = None) -> "Seq2SeqLM":
        """Warm-start: copy a pretrained encoder's backbone into both stacks (cross-attention starts fresh)."""
        base = encoder_model.config
        cfg = config or ModelConfig(**{**base.to_dict(), "arch": "encoder-decoder", "family": "seq2seq"})
        model = cls(cfg)
        backbone = encoder_model.transformer.state_dict()
        model.encoder.load_state_dict(backbone)
        missing, unexpected = model.decoder.load_state_dict(backbone, strict=False)
        if unexpected or any(".cross." not in k and ".ln_cross." not in k for k in missing):
            raise ValueError(f"encoder and decoder shapes differ: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        return model
