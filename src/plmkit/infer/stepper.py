"""Running a model one new token at a time over a pre-allocated KV cache.

`Stepper` serves both shapes that generate text: a causal LM (GPT), whose prompts are
left-padded into one batch (the model computes positions from the attention mask), and an
encoder-decoder, whose sources are encoded once (cross-attention keys/values are then cached in
`KVCache.cross`) and whose decoder starts from the decoder start token. One prefill runs the
prompt (projecting only its last position to the vocabulary); each step then runs one token.

It also keeps each row's token history (prompt + generated) for penalties, and reorders
everything (cache, history, encoder output) when beam search picks which rows continue.
Shapes: B rows, P prompt length (padded), N history length, V vocabulary, S source length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from plmkit.infer.batching import position_limit
from plmkit.infer.quantize import compute_dtype
from plmkit.models.layers import KVCache


class Stepper:
    """One causal LM or encoder-decoder, B prompts, and the state of decoding them.

    prompts: token lists (decoder prompts, or encoder sources for an encoder-decoder).
    compile: run the one-token decode steps through `torch.compile` (dynamic shapes).
    """

    def __init__(self, model, prompts: Sequence[Sequence[int]], max_new_tokens: int, compile: bool = False) -> None:
        self.model = model
        self.config = model.config
        self.seq2seq = self.config.arch == "encoder-decoder"
        self.device = next(model.parameters()).device
        self.batch_size = len(prompts)
        self.max_new_tokens = max_new_tokens
        self._check_lengths(prompts)
        if self.seq2seq:
            decoder_prompts = [[model.decoder_start_id]] * len(prompts)
            self._encode(prompts)
        else:
            decoder_prompts = prompts
        self._history(decoder_prompts)
        layers_len = self.prompt_length + max_new_tokens
        self.cache = KVCache.for_model(self.config, self.batch_size, layers_len, self.device, compute_dtype(model))
        forward = model.decode if self.seq2seq else model
        self._step_forward = torch.compile(forward, dynamic=True) if compile else forward

    # ---- setup -------------------------------------------------------------------------------
    def _check_lengths(self, prompts: Sequence[Sequence[int]]) -> None:
        cfg = self.config
        if cfg.position != "learned":
            return
        limit = position_limit(cfg)
        longest = max(len(p) for p in prompts)
        decoder_len = (1 if self.seq2seq else longest) + self.max_new_tokens
        if self.seq2seq and longest > limit:
            raise ValueError(f"a source has {longest} tokens; the model takes at most {limit} (max_positions)")
        if decoder_len > limit:
            what = "1 start token" if self.seq2seq else f"the longest prompt ({longest} tokens)"
            raise ValueError(f"{what} + max_new_tokens ({self.max_new_tokens}) = {decoder_len} positions exceeds "
                             f"the model's max_positions ({limit}); lower max_new_tokens or shorten the prompt")

    def _history(self, prompts: Sequence[Sequence[int]]) -> None:
        """Left-pad the decoder prompts into the history buffer (B, P + max_new)."""
        p = max(len(x) for x in prompts)
        self.prompt_length = p
        pad = self.config.pad_token_id
        self.tokens = torch.full((self.batch_size, p + self.max_new_tokens), pad, dtype=torch.long)
        self.valid = torch.zeros(self.tokens.shape, dtype=torch.bool)
        for i, ids in enumerate(prompts):
            self.tokens[i, p - len(ids) : p] = torch.tensor(ids, dtype=torch.long)
            self.valid[i, p - len(ids) : p] = True
        self.padded = any(len(x) != p for x in prompts)
        self.valid[:, p:] = True
        self.tokens, self.valid = self.tokens.to(self.device), self.valid.to(self.device)
        self.length = p

    def _encode(self, sources: Sequence[Sequence[int]]) -> None:
        """Encode the right-padded sources once: memory (B, S, C), memory_mask (B, S) or None."""
        s = max(len(x) for x in sources)
        ids = torch.full((len(sources), s), self.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros(ids.shape, dtype=torch.long)
        for i, src in enumerate(sources):
            ids[i, : len(src)] = torch.tensor(src, dtype=torch.long)
            mask[i, : len(src)] = 1
        padded = any(len(x) != s for x in sources)
        self.memory_mask = mask.to(self.device) if padded else None
        self.memory = self.model.encode(ids.to(self.device), self.memory_mask)

    # ---- state -------------------------------------------------------------------------------
    def history(self) -> tuple[Tensor, Tensor]:
        """(tokens, valid), both (B, N): the prompt (padding marked invalid) and the tokens so far."""
        return self.tokens[:, : self.length], self.valid[:, : self.length]

    def _attention_mask(self) -> Tensor | None:
        return self.valid[:, : self.length] if self.padded else None

    # ---- running -----------------------------------------------------------------------------
    def prefill(self) -> Tensor:
        """Run the prompts; next-token logits (B, V)."""
        ids = self.tokens[:, : self.length]
        return self._forward(self.model.decode if self.seq2seq else self.model, ids, last_only=True)

    def step(self, tokens: Tensor) -> Tensor:
        """Append tokens (B,) to every row and run them; next-token logits (B, V)."""
        self.tokens[:, self.length] = tokens
        self.length += 1
        return self._forward(self._step_forward, tokens[:, None], last_only=False)

    def _forward(self, forward, ids: Tensor, last_only: bool) -> Tensor:
        if self.seq2seq:
            logits = forward(ids, self.memory, self.memory_mask, cache=self.cache, last_only=last_only)
        else:
            logits = forward(ids, attention_mask=self._attention_mask(), cache=self.cache, last_only=last_only).logits
        return logits[:, -1]

    def reorder(self, index: Tensor) -> None:
        """Continue from rows `index` (B',) of the current batch (beam search); B becomes B'."""
        self.cache.reorder(index)
        self.tokens, self.valid = self.tokens[index], self.valid[index]
        self.batch_size = index.numel()
        if self.seq2seq:
            self.memory = self.memory[index]
            self.memory_mask = None if self.memory_mask is None else self.memory_mask[index]
