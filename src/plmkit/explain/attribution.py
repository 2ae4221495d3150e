"""Integrated gradients: how much each input token moved a classifier's score.

Integrated gradients (Sundararajan et al., 2017) in token-embedding space: the path from a
baseline embedding x' (the pad token's, or zeros) to the input's x, with

    IG_i = (x_i - x'_i) . integral_0^1 df(x' + a (x - x'))/dx_i da

summed over the embedding dimension for one score per token. The integral uses Gauss-Legendre
quadrature over `n_steps` points. Completeness, sum_i IG_i = f(x) - f(x'), holds up to the
quadrature error, reported as `delta`. The interpolated embeddings are swapped in by a
forward hook on the token embedding; position and type embeddings stay as they are.
Shapes: T tokens, E embedding size, N steps.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from plmkit.infer.batching import device_of, input_names, label_names, pad_id, position_limit
from plmkit.models.base import eval_mode

Baseline = Literal["pad", "zero"]
Output = Literal["probability", "logit"]


@dataclass
class Attribution:
    """Token attributions of one text toward one class."""

    tokens: list[str]
    scores: list[float]
    """One per token; positive pushed the score up."""
    target: int
    label: str
    f_input: float
    """The explained score (probability or logit of `target`) at the input."""
    f_baseline: float
    """The same score at the baseline."""

    @property
    def delta(self) -> float:
        """Completeness gap: sum(scores) - (f_input - f_baseline); near 0 when n_steps suffices."""
        return float(sum(self.scores) - (self.f_input - self.f_baseline))


def token_embedding(model: nn.Module) -> nn.Embedding:
    """The token embedding of a model's backbone (the encoder's, for an encoder-decoder)."""
    backbone = getattr(model, "transformer", None) or getattr(model, "encoder", None)
    emb = getattr(getattr(backbone, "emb", None), "tok", None)
    if not isinstance(emb, nn.Embedding):
        raise ValueError(f"{type(model).__name__} has no token embedding to attribute to")
    return emb


def integrated_gradients(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    token_type_ids: Tensor | None = None,
    *,
    target: int,
    baseline_ids: Tensor | None = None,
    n_steps: int = 50,
    output: Output = "probability",
    internal_batch_size: int = 16,
) -> tuple[Tensor, float, float]:
    """Attributions (T,) of one sequence to class `target` of a sequence classifier.

    input_ids, attention_mask, token_type_ids: (1, T). `baseline_ids` (1, T) gives the
    baseline's tokens; None means the zero embedding. Returns (attributions, f(input),
    f(baseline)). The model runs in eval mode; its parameters get no gradients.
    """
    if input_ids.dim() != 2 or input_ids.size(0) != 1:
        raise ValueError(f"integrated_gradients explains one sequence: input_ids must be (1, T), "
                         f"got {tuple(input_ids.shape)}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be positive, got {n_steps}")
    emb = token_embedding(model)
    with torch.no_grad():
        x = emb(input_ids)  # (1, T, E)
        x0 = torch.zeros_like(x) if baseline_ids is None else emb(baseline_ids)
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    alphas = torch.tensor((nodes + 1) / 2, dtype=x.dtype, device=x.device)  # (N,) in (0, 1)
    weights = torch.tensor(weights / 2, dtype=x.dtype, device=x.device)
    kwargs = _forward_kwargs(model, attention_mask, token_type_ids)
    total = torch.zeros_like(x[0])  # (T, E)
    with eval_mode(model):
        for start in range(0, n_steps, internal_batch_size):
            a = alphas[start: start + internal_batch_size]
            with torch.enable_grad():
                path = (x0 + a[:, None, None] * (x - x0)).detach().requires_grad_(True)  # (n, T, E)
                scores = _scores(model, emb, path, input_ids, kwargs, target, output)
                (grad,) = torch.autograd.grad(scores.sum(), path)
            total += (grad * weights[start: start + len(a), None, None]).sum(dim=0)
        with torch.no_grad():
            ends = _scores(model, emb, torch.cat([x, x0]), input_ids, kwargs, target, output)
    attributions = ((x[0] - x0[0]) * total).sum(dim=-1)  # (T,)
    return attributions.detach(), float(ends[0]), float(ends[1])


def _forward_kwargs(model: nn.Module, attention_mask: Tensor | None,
                    token_type_ids: Tensor | None) -> dict[str, Tensor]:
    kwargs = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if token_type_ids is not None and "token_type_ids" in input_names(model):
        kwargs["token_type_ids"] = token_type_ids
    return kwargs


def _scores(model: nn.Module, emb: nn.Embedding, embeddings: Tensor, input_ids: Tensor, kwargs: dict[str, Tensor],
            target: int, output: Output) -> Tensor:
    """Score of `target` (n,) with the token embedding output replaced by `embeddings` (n, T, E)."""
    n = embeddings.size(0)
    handle = emb.register_forward_hook(lambda module, args, out: embeddings)
    try:
        batch = {k: v.expand(n, -1) for k, v in kwargs.items()}
        logits = model(input_ids.expand(n, -1), **batch).logits.float()  # (n, K)
    finally:
        handle.remove()
    if logits.dim() != 2:
        raise ValueError(f"integrated gradients needs a sequence classifier (logits (B, K)), got {tuple(logits.shape)}")
    return logits.softmax(dim=-1)[:, target] if output == "probability" else logits[:, target]


def explain_text(
    model: nn.Module,
    tokenizer: Any,
    text: str,
    pair: str | None = None,
    *,
    target: int | str | None = None,
    baseline: Baseline = "pad",
    n_steps: int = 50,
    output: Output = "probability",
) -> Attribution:
    """Integrated-gradients attributions of a text (or pair) for a sequence-classification model.

    `target`: a class id or label name; None = the predicted class. ``baseline="pad"`` puts
    the pad token at every non-special position (special tokens stay, so they get 0);
    ``"zero"`` uses the zero embedding everywhere.
    """
    if model.task != "sequence-classification":
        raise ValueError(f"integrated gradients explains sequence classifiers; this model has a {model.task} head")
    if baseline not in ("pad", "zero"):
        raise ValueError(f"baseline must be 'pad' or 'zero', got {baseline!r}")
    enc = tokenizer.encode(text, pair, max_length=position_limit(model.config))
    device = device_of(model)
    ids = torch.tensor([enc.ids], device=device)
    types = torch.tensor([enc.type_ids], device=device)
    mask = torch.ones_like(ids)
    names = label_names(model.config)
    if target is None:
        with eval_mode(model), torch.no_grad():
            target = int(model(ids, **_forward_kwargs(model, mask, types)).logits.argmax(dim=-1))
    elif isinstance(target, str):
        if target not in names:
            raise ValueError(f"unknown label {target!r}; labels: {names}")
        target = names.index(target)
    elif not 0 <= target < len(names):
        raise ValueError(f"target {target} out of range for {len(names)} classes")
    base = None
    if baseline == "pad":
        pad = pad_id(tokenizer, model.config)
        special = torch.tensor([enc.special_tokens_mask], device=device).bool()
        base = torch.where(special, ids, torch.full_like(ids, pad))
    scores, f_x, f_0 = integrated_gradients(model, ids, mask, types, target=target, baseline_ids=base,
                                            n_steps=n_steps, output=output)
    return Attribution(list(enc.tokens), scores.tolist(), target, names[target], f_x, f_0)


# --------------------------------------------------------------------------- rendering


def render_text(attribution: Attribution, width: int = 20) -> str:
    """A plain-text table: one line per token with its score and a bar of +/- signs."""
    scale = max((abs(s) for s in attribution.scores), default=0.0) or 1.0
    lines = [f"target: {attribution.label}  f(input)={attribution.f_input:.4f}  "
             f"f(baseline)={attribution.f_baseline:.4f}  delta={attribution.delta:+.2e}"]
    for token, score in zip(attribution.tokens, attribution.scores):
        bar = ("+" if score >= 0 else "-") * round(abs(score) / scale * width)
        lines.append(f"{token:>16} {score:+.4f} {bar}")
    return "\n".join(lines)


def render_html(attribution: Attribution) -> str:
    """An HTML fragment: tokens on a background green (positive) or red (negative) by score."""
    scale = max((abs(s) for s in attribution.scores), default=0.0) or 1.0
    spans = []
    for token, score in zip(attribution.tokens, attribution.scores):
        alpha = min(1.0, abs(score) / scale)
        rgb = "0,160,0" if score >= 0 else "220,0,0"
        spans.append(f'<span title="{score:+.4f}" style="background:rgba({rgb},{alpha:.2f});'
                     f'padding:1px 2px;margin:1px;border-radius:3px">{html.escape(token)}</span>')
    head = (f"<p>target: <b>{html.escape(attribution.label)}</b>, f(input) = {attribution.f_input:.4f}, "
            f"f(baseline) = {attribution.f_baseline:.4f}, completeness gap = {attribution.delta:+.2e}</p>")
    return f'<div class="attribution">{head}<p>{" ".join(spans)}</p></div>'


__all__ = ["Attribution", "explain_text", "integrated_gradients", "render_html", "render_text", "token_embedding"]
