"""Attention maps: the attention probabilities of every layer and head, and heatmaps of them.

The models attend through `F.scaled_dot_product_attention`, which never materializes the
probabilities. Forward hooks on the attention modules see each call's input and mask, and
re-run the attention math beside it: ``softmax(q k^T / sqrt(D))`` under the very mask SDPA got.
The model's own path is untouched. Shapes: L layers, B batch, H heads, T queries, S keys.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from plmkit.files import atomic_write
from plmkit.infer.batching import device_of, input_names, position_limit
from plmkit.models.base import eval_mode
from plmkit.models.layers import Attention, apply_rotary

Stack = Literal["self", "decoder", "cross"]
_ARG_NAMES = ("x", "mask", "is_causal", "rope", "cache", "layer", "memory")


def attention_probabilities(attn: Attention, args: tuple, kwargs: dict[str, Any]) -> Tensor:
    """Recompute the probabilities (B, H, T, S) of one `Attention.forward` call from its arguments."""
    call = dict(zip(_ARG_NAMES, args), **kwargs)
    x, mask, cache = call["x"], call.get("mask"), call.get("cache")
    if cache is not None and not attn.cross:
        raise ValueError("attention maps are computed without a KV cache; call the model without cache=")
    if attn.cross:
        q = attn._heads(attn.q(x))
        if cache is not None and cache.cross[call.get("layer", 0)] is not None:
            k = cache.cross[call.get("layer", 0)][0]
        else:
            k = attn._heads(attn.kv(call["memory"]).chunk(2, dim=-1)[0])
    else:
        q, k, _ = (attn._heads(t) for t in attn.qkv(x).chunk(3, dim=-1))  # (B, H, T, D)
        if call.get("rope") is not None:
            q, k = apply_rotary(q, *call["rope"]), apply_rotary(k, *call["rope"])
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.size(-1))  # (B, H, T, S)
    if call.get("is_causal"):
        t, s = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(t, s, dtype=torch.bool, device=scores.device).tril(), -math.inf)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return scores.softmax(dim=-1)


def attention_modules(model: nn.Module, stack: Stack = "self") -> list[Attention]:
    """The attention modules of one stack, in layer order (one shared module for ALBERT).

    "self": the backbone's self-attention (the encoder's, for an encoder-decoder); "decoder":
    an encoder-decoder's decoder self-attention; "cross": its cross-attention.
    """
    if stack not in ("self", "decoder", "cross"):
        raise ValueError(f"stack must be 'self', 'decoder' or 'cross', got {stack!r}")
    backbone = getattr(model, "transformer", None) or getattr(model, "encoder", None)
    if stack != "self":
        backbone = getattr(model, "decoder", None)
        if backbone is None or not hasattr(model, "encoder"):
            raise ValueError(f"stack {stack!r} needs an encoder-decoder; this model has a {type(model).__name__}")
    if backbone is None or not hasattr(backbone, "blocks"):
        raise ValueError(f"{type(model).__name__} has no Transformer backbone")
    return [block.cross if stack == "cross" else block.attn for block in backbone.blocks]


def attention_maps(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                   stack: Stack = "self", **forward_kwargs: Any) -> Tensor:
    """Attention probabilities (L, B, H, T, S) of every layer of `stack` for one forward pass.

    input_ids, attention_mask (B, T); `forward_kwargs` go to the model (token_type_ids,
    decoder_input_ids, ...). Padding keys get probability 0; each row sums to 1. Runs the
    model in eval mode (no dropout) and restores its mode afterwards.
    """
    captured: list[Tensor] = []

    def hook(module: Attention, args: tuple, kwargs: dict[str, Any], output: Tensor) -> None:
        captured.append(attention_probabilities(module, args, kwargs).detach())

    modules = list(dict.fromkeys(attention_modules(model, stack)))  # shared layers: hook once
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
    try:
        with eval_mode(model), torch.inference_mode():
            model(input_ids, attention_mask=attention_mask, **forward_kwargs)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(captured)  # (L, B, H, T, S)


def text_attention(model: nn.Module, tokenizer, text: str, pair: str | None = None, *,
                   stack: Stack = "self") -> tuple[list[str], Tensor]:
    """Tokens and attention maps (L, H, T, T) of one text (or text pair) through an encoder or decoder."""
    enc = tokenizer.encode(text, pair, max_length=position_limit(model.config))
    ids = torch.tensor([enc.ids], device=device_of(model))
    kwargs: dict[str, Any] = {}
    if "token_type_ids" in input_names(model):
        kwargs["token_type_ids"] = torch.tensor([enc.type_ids], device=ids.device)
    if model.config.arch == "encoder-decoder":
        kwargs["decoder_input_ids"] = torch.full((1, 1), model.decoder_start_id, device=ids.device)
    maps = attention_maps(model, ids, torch.ones_like(ids), stack=stack, **kwargs)
    return list(enc.tokens), maps[:, 0]


def plot_attention(weights: Tensor, tokens: list[str], path: str | Path, *, key_tokens: list[str] | None = None,
                   title: str = "", max_columns: int = 4) -> Path:
    """Write a heatmap PNG of attention weights (T, S) or one panel per head (H, T, S).

    Rows are queries (`tokens`), columns keys (`key_tokens`, default `tokens`). Uses matplotlib's
    Agg canvas directly, so no display or global backend is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w = weights.detach().float().cpu()
    w = w[None] if w.dim() == 2 else w
    if w.dim() != 3 or w.size(1) != len(tokens) or w.size(2) != len(key_tokens or tokens):
        raise ValueError(f"weights of shape {tuple(weights.shape)} do not match {len(tokens)} query and "
                         f"{len(key_tokens or tokens)} key tokens")
    heads = w.size(0)
    cols = min(heads, max_columns)
    rows = math.ceil(heads / cols)
    side = max(3.0, 0.28 * len(tokens) + 1.5)
    fig = Figure(figsize=(side * cols + 1.0, side * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for h in range(heads):
        ax = fig.add_subplot(rows, cols, h + 1)
        image = ax.imshow(w[h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(w.size(2)), key_tokens or tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(w.size(1)), tokens, fontsize=7)
        ax.set_title(f"head {h}" if heads > 1 else (title or "attention"), fontsize=9)
    fig.colorbar(image, ax=fig.axes, shrink=0.6).set_label("attention weight")
    if title and heads > 1:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


__all__ = ["attention_maps", "attention_modules", "attention_probabilities", "plot_attention", "text_attention"]
