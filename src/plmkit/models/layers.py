"""The one set of Transformer layers that every plmkit model is built from.

Dimension legend used in shape comments:
    B batch, T query length, S key length (cache + new), C hidden size, E embedding size,
    H heads, D head size (C // H), V vocabulary, L layers.

Attention always goes through `F.scaled_dot_product_attention` (flash / memory-efficient
kernels on GPU). A single boolean mask (B, 1, T, S), True = may attend, expresses padding,
causality, a KV-cache offset and packed sequences (block-diagonal by `segment_ids`) alike,
so none of these needs a different code path.

Dropout has two implementations that compute the same function (`use_fast_dropout` picks one;
the default is torch's): torch's, and a cheaper CPU path that draws its keep-mask 16 bits at a
time from one 64-bit random word per 4 elements (torch's CPU dropout draws one Bernoulli sample
per element) and, for attention-probability dropout, runs attention explicitly, since SDPA falls
back to its slower math path whenever attention dropout is on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plmkit.config import ModelConfig

_ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


# --------------------------------------------------------------------------- dropout

_MASK_BITS = 16
"""Random bits per element of a fast dropout mask: the drop probability is realized to 1 / 2**16."""


def dropout_mask(like: Tensor, p: float) -> tuple[Tensor, float]:
    """A keep-mask for dropout with probability `p`: (mask, scale).

    mask has like's shape, dtype and device, 1 where kept and 0 where dropped; scale is
    1 / (1 - p'), where p' = round(p * 2**16) / 2**16 is the drop probability the mask realizes
    (|p' - p| <= 2**-17), so ``x * mask * scale`` keeps the expectation of x exactly. Each
    element reads 16 bits of one full-range 64-bit random word drawn from torch's generator
    (seeded and checkpointed like any other torch random number).
    """
    levels = 1 << _MASK_BITS
    threshold = round(p * levels)
    n = like.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device).random_(-(2**63), None)
    r = words.view(torch.int16)[:n].view(like.shape)  # uniform in [-2**15, 2**15)
    keep = (r >= threshold - levels // 2).view(torch.uint8).to(like.dtype)  # uint8 -> float converts fast
    return keep, levels / (levels - threshold)


def _fast_dropout_applies(fast: bool, p: float, training: bool, x: Tensor) -> bool:
    """The cheaper path runs on CPU tensors in training, outside torch.compile (which fuses its own)."""
    return fast and training and p > 0 and x.device.type == "cpu" and not torch.compiler.is_compiling()


class Dropout(nn.Dropout):
    """`nn.Dropout` with the cheaper CPU mask as an option (``fast``, see `use_fast_dropout`)."""

    fast: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if not _fast_dropout_applies(self.fast, self.p, self.training, x):
            return super().forward(x)
        keep, scale = dropout_mask(x, self.p)
        return torch.mul(x, keep).mul_(scale)

    def residual(self, x: Tensor, h: Tensor) -> Tensor:
        """x + dropout(h), in one pass on the fast path."""
        if not _fast_dropout_applies(self.fast, self.p, self.training, h):
            return x + super().forward(h)
        keep, scale = dropout_mask(h, self.p)
        if x.dtype != h.dtype:  # addcmul takes one dtype; the residual stream keeps its own
            return x + torch.mul(h, keep).mul_(scale)
        return torch.addcmul(x, h, keep, value=scale)


def use_fast_dropout(model: nn.Module, enabled: bool = True) -> None:
    """Switch every `Dropout` and `Attention` of `model` to the cheaper CPU dropout (or back).

    Both paths drop each element independently with the configured probability and rescale
    the kept ones; they draw different random numbers, so runs differ in which elements drop.
    """
    for module in model.modules():
        if isinstance(module, (Dropout, Attention)):
            module.fast = enabled


# --------------------------------------------------------------------------- masks


def build_attention_mask(
    attention_mask: Tensor | None,
    query_len: int,
    past_len: int = 0,
    causal: bool = False,
    segment_ids: Tensor | None = None,
) -> tuple[Tensor | None, bool]:
    """Combine padding, causality, cache offset and packing into one mask for SDPA.

    attention_mask: (B, S) 1 = real token, over all keys (cache + new); segment_ids: (B, T)
    equal ids may attend to each other (packed rows; no cache). Returns (mask, is_causal):
    mask is (B, 1, T, S) bool or None; is_causal asks SDPA for its own causal mask (fast path).
    """
    key_len = past_len + query_len
    if segment_ids is not None:
        mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # (B, 1, T, T)
        if causal:
            mask = mask & _causal(query_len, key_len, past_len, segment_ids.device)
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, :].bool()
        return mask, False
    if attention_mask is None or known_all_real(attention_mask):
        if not causal or query_len == 1:
            return None, False
        if past_len == 0:
            return None, True
        return _causal(query_len, key_len, past_len, _device(attention_mask))[None, None], False
    keys = attention_mask[:, None, None, :].bool()  # (B, 1, 1, S)
    if not causal:
        return keys, False
    mask = keys & _causal(query_len, key_len, past_len, attention_mask.device)  # (B, 1, T, S)
    # A padding query may see no key at all; let it see itself so SDPA yields no NaN.
    # Its output is never used.
    return mask | _diagonal(query_len, key_len, past_len, attention_mask.device), False


def known_all_real(mask: Tensor) -> bool:
    """Whether a padding mask (B, S) is known to mark every position real, without a device sync.

    On the CPU the answer is read from the mask (cheap; an all-real mask keeps SDPA's fast paths).
    On an accelerator, reading it would wait for the device on every forward, so the answer is
    False: the mask is then built and applied, which gives the same result (an all-True mask
    masks nothing). Callers that know there is no padding pass no mask at all.
    """
    return mask.device.type == "cpu" and not torch.compiler.is_compiling() and bool(mask.all())


def _device(t: Tensor | None) -> torch.device | None:
    return None if t is None else t.device


def _causal(t: int, s: int, past: int, device: torch.device | None) -> Tensor:
    q = torch.arange(t, device=device)[:, None] + past
    return torch.arange(s, device=device)[None, :] <= q  # (T, S)


def _diagonal(t: int, s: int, past: int, device: torch.device | None) -> Tensor:
    q = torch.arange(t, device=device)[:, None] + past
    return torch.arange(s, device=device)[None, :] == q  # (T, S)


# --------------------------------------------------------------------------- KV cache


class KVCache:
    """Pre-allocated keys and values for incremental decoding.

    k, v: (L, B, H, S_max, D). One prefill writes the prompt; each decode step appends T new
    positions. `length` advances once per model forward (after all layers). Cross-attention
    keys/values of an encoder-decoder are computed once and kept in `cross`.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        max_length: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (num_layers, batch_size, num_heads, max_length, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.cross: list[tuple[Tensor, Tensor] | None] = [None] * num_layers

    @classmethod
    def for_model(
        cls, config: ModelConfig, batch_size: int, max_length: int, device=None, dtype=torch.float32
    ) -> "KVCache":
        layers = config.decoder_layers if config.arch == "encoder-decoder" else config.num_layers
        return cls(layers, batch_size, config.num_heads, config.head_dim, max_length, device, dtype)

    @property
    def max_length(self) -> int:
        return self.k.size(3)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, T, D) after the cached positions; return all keys/values so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_length:
            raise ValueError(f"KV cache overflow: {end} positions > max_length {self.max_length}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, H, S, D)

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search): index (B',) into the batch dimension."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)
        self.cross = [None if c is None else (c[0][index], c[1][index]) for c in self.cross]


# --------------------------------------------------------------------------- rotary


def rotary_tables(position_ids: Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin tables (B, 1, T, D) for rotary position embeddings at `position_ids` (B, T)."""
    inv = base ** (-torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    angles = position_ids[..., None].float() * inv  # (B, T, D/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, T, D) by the position angles (rotate-half convention)."""
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


# --------------------------------------------------------------------------- blocks


def _explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, p: float) -> Tensor:
    """softmax(q k^T / sqrt(D) + mask) with fast dropout, times v: what SDPA computes with dropout_p=p.

    q (B, H, T, D), k and v (B, H, S, D), mask (B, 1, T, S) True = may attend -> (B, H, T, D).
    A query that may attend to nothing gets uniform weights instead of NaN (its output is unused).
    """
    scores = torch.matmul(q, k.transpose(-2, -1))  # (B, H, T, S)
    if is_causal:
        mask = _causal(q.size(-2), k.size(-2), 0, q.device)[None, None]
    if mask is None:
        scores = scores.mul_(1.0 / math.sqrt(q.size(-1)))
    else:
        bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
        bias.masked_fill_(~mask, torch.finfo(scores.dtype).min)  # (B, 1, T, S), finite: no NaN rows
        scores = torch.add(bias, scores, alpha=1.0 / math.sqrt(q.size(-1)))
    probs = scores.softmax(dim=-1)
    keep, scale = dropout_mask(probs, p)
    return torch.matmul(torch.mul(probs, keep).mul_(scale), v)


class Attention(nn.Module):
    """Multi-head attention; self-attention (fused qkv) or cross-attention (q from x, kv from memory)."""

    fast: bool = False
    """Attention-probability dropout through `_explicit_attention` (see `use_fast_dropout`)."""

    def __init__(self, config: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        c = config.hidden_size
        self.num_heads = config.num_heads
        self.cross = cross
        if cross:
            self.q = nn.Linear(c, c)
            self.kv = nn.Linear(c, 2 * c)
        else:
            self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.dropout = config.attention_dropout

    def _heads(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        return x.view(b, t, self.num_heads, c // self.num_heads).transpose(1, 2)  # (B, H, T, D)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        memory: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, C) -> (B, T, C). memory (B, S, C) is the encoder output for cross-attention."""
        if self.cross:
            q = self._heads(self.q(x))
            k, v = self._cross_kv(memory, cache, layer)
        else:
            q, k, v = (self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if cache is not None:
                k, v = cache.update(layer, k, v)
        p = self.dropout if self.training else 0.0
        if _fast_dropout_applies(self.fast, p, self.training, q):
            y = _explicit_attention(q, k, v, mask, is_causal, p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        b, h, t, d = y.shape
        return self.proj(y.transpose(1, 2).reshape(b, t, h * d))  # (B, T, C)

    def _cross_kv(self, memory: Tensor | None, cache: KVCache | None, layer: int) -> tuple[Tensor, Tensor]:
        if cache is not None and cache.cross[layer] is not None:
            return cache.cross[layer]  # type: ignore[return-value]
        if memory is None:
            raise ValueError("cross-attention needs the encoder output (memory)")
        k, v = (self._heads(t) for t in self.kv(memory).chunk(2, dim=-1))
        if cache is not None:
            cache.cross[layer] = (k, v)
        return k, v


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.activation)
        self.proj = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """One Transformer layer: self-attention, optional cross-attention, feed-forward.

    Post-norm (BERT): x = LN(x + sublayer(x)). Pre-norm (GPT-2): x = x + sublayer(LN(x)).
    """

    def __init__(self, config: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        c, eps = config.hidden_size, config.layer_norm_eps
        self.pre_norm = config.norm == "pre"
        self.attn = Attention(config)
        self.ln_attn = nn.LayerNorm(c, eps=eps)
        self.cross = Attention(config, cross=True) if cross else None
        self.ln_cross = nn.LayerNorm(c, eps=eps) if cross else None
        self.mlp = MLP(config)
        self.ln_mlp = nn.LayerNorm(c, eps=eps)
        self.drop = Dropout(config.dropout)

    def _sublayer(self, x: Tensor, norm: nn.Module, fn) -> Tensor:
        if self.pre_norm:
            return self.drop.residual(x, fn(norm(x)))
        return norm(self.drop.residual(x, fn(x)))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, C) -> (B, T, C)."""
        x = self._sublayer(x, self.ln_attn, lambda h: self.attn(h, mask, is_causal, rope, cache, layer))
        if self.cross is not None:
            x = self._sublayer(
                x, self.ln_cross, lambda h: self.cross(h, memory_mask, cache=cache, layer=layer, memory=memory)
            )
        return self._sublayer(x, self.ln_mlp, self.mlp)


class Embeddings(nn.Module):
    """Token (+ learned position) (+ token type) embeddings; ALBERT's factorized projection.

    BERT-style (post-norm) models normalize the embedding sum; GPT-2-style do not.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        e = config.embedding_size or config.hidden_size
        self.tok = nn.Embedding(config.vocab_size, e, padding_idx=None)
        self.pos = (
            nn.Embedding(config.max_positions, e) if config.position == "learned" else None
        )
        self.token_type = nn.Embedding(config.type_vocab_size, e) if config.type_vocab_size > 0 else None
        self.norm = nn.LayerNorm(e, eps=config.layer_norm_eps) if config.norm == "post" else None
        self.drop = Dropout(config.dropout)
        self.proj = nn.Linear(e, config.hidden_size) if e != config.hidden_size else None

    def forward(self, input_ids: Tensor, position_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """input_ids, position_ids, token_type_ids (B, T) -> (B, T, C)."""
        x = self.tok(input_ids)
        if self.pos is not None:
            x = x + self.pos(position_ids)
        if self.token_type is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + self.token_type(types)
        if self.norm is not None:
            x = self.norm(x)
        x = self.drop(x)
        return self.proj(x) if self.proj is not None else x


class Transformer(nn.Module):
    """Embeddings + a stack of blocks (+ final LayerNorm for pre-norm): the backbone of every shape.

    causal=True makes a decoder (GPT); cross=True adds cross-attention (seq2seq decoder).
    share_layers=True applies one block num_layers times (ALBERT).
    """

    def __init__(self, config: ModelConfig, causal: bool = False, cross: bool = False, num_layers: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.causal = causal
        self.num_layers = num_layers or config.num_layers
        self.emb = Embeddings(config)
        distinct = 1 if config.share_layers else self.num_layers
        self.blocks = nn.ModuleList(Block(config, cross=cross) for _ in range(distinct))
        self.norm_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm == "pre" else None

    def default_positions(self, input_ids: Tensor, past_len: int, attention_mask: Tensor | None) -> Tensor:
        """Position ids (B, T): past_len.. for plain rows; RoBERTa counts real tokens after padding_idx."""
        cfg = self.config
        if cfg.family == "roberta":
            real = (input_ids != cfg.pad_token_id).long()
            return (torch.cumsum(real, dim=1) + past_len) * real + cfg.pad_token_id
        t = input_ids.size(1)
        pos = torch.arange(past_len, past_len + t, device=input_ids.device)[None].expand(input_ids.size(0), t)
        if attention_mask is not None and self.causal:
            # Left-padded prompts: count positions from each row's first real token (for a row
            # without padding this is past_len.., the same as above; no device sync to tell them apart).
            pos = (attention_mask.long().cumsum(1) - 1).clamp(min=0)[:, past_len : past_len + t]
        return pos + cfg.position_offset

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        segment_ids: Tensor | None = None,
        cache: KVCache | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        """input_ids (B, T) -> hidden states (B, T, C).

        attention_mask (B, S): 1 = real token, over cache + new positions when a cache is used.
        memory (B, S_enc, C), memory_mask (B, S_enc): encoder output for cross-attention.
        """
        past = cache.length if cache is not None else 0
        last = past + input_ids.size(1) + self.config.position_offset
        if self.emb.pos is not None and position_ids is None and last > self.config.max_positions:
            raise ValueError(
                f"sequence of {past + input_ids.size(1)} positions (+{self.config.position_offset} offset) "
                f"exceeds the model's max_positions={self.config.max_positions}"
            )
        if position_ids is None:
            position_ids = self.default_positions(input_ids, past, attention_mask)
        x = self.emb(input_ids, position_ids, token_type_ids)
        mask, is_causal = build_attention_mask(attention_mask, input_ids.size(1), past, self.causal, segment_ids)
        cross_mask = None if memory_mask is None or known_all_real(memory_mask) else memory_mask[:, None, None, :].bool()
        rope = None
        if self.config.position == "rotary":
            rope = rotary_tables(position_ids, self.config.head_dim, self.config.rotary_base, x.dtype)
        for i in range(self.num_layers):
            block = self.blocks[0 if self.config.share_layers else i]
            # the layer index matters to the cache only; a constant otherwise lets every block of a
            # compiled model (train/compiling.py) reuse one graph instead of specializing on i
            x = block(x, mask, is_causal, rope, cache, i if cache is not None else 0, memory, cross_mask)
        if cache is not None:
            cache.length += input_ids.size(1)
        return self.norm_f(x) if self.norm_f is not None else x


def init_weights(module: nn.Module, std: float) -> None:
    """BERT/GPT-2 initialization: normal(0, std) weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def scaled_residual_init(module: nn.Module, num_layers: int, std: float) -> None:
    """GPT-2: output projections of residual branches get std / sqrt(2 * layers)."""
    for name, p in module.named_parameters():
        if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
            nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * num_layers))
