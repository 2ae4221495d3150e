"""What every plmkit model shares: its output record, losses, weight tying, save/load."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plmkit.config import ModelConfig
from plmkit.models.layers import init_weights, scaled_residual_init

M = TypeVar("M", bound=nn.Module)


@contextmanager
def eval_mode(module: M) -> Iterator[M]:
    """The module in eval mode (no dropout) inside the block, its previous mode restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@dataclass
class ModelOutput:
    """What a forward pass returns. Shapes: B batch, T length, V vocabulary, C hidden, K classes."""

    loss: Tensor | None = None
    """Scalar mean loss over the label positions, when labels are given."""
    n_targets: Tensor | None = None
    """Number of label positions the loss averages over (0-d long tensor), for token-weighted accumulation."""
    logits: Tensor | None = None
    """(B, T, V) LM, (N_masked, V) MLM with labels, (B, K) sequence classes, (B, T, K) token classes."""
    seq_logits: Tensor | None = None
    """(B, 2) next-sentence / sentence-order prediction."""
    start_logits: Tensor | None = None
    """(B, T) extractive QA span start."""
    end_logits: Tensor | None = None
    """(B, T) extractive QA span end."""
    hidden_states: Tensor | None = None
    """(B, T, C) last layer (for seq2seq: the encoder's output, the memory the decoder attends to)."""
    mlm_loss: Tensor | None = None
    """Masked-LM part of a pretraining loss (ELECTRA: the generator's)."""
    seq_loss: Tensor | None = None
    """Next-sentence / sentence-order part of a pretraining loss."""
    rtd_loss: Tensor | None = None
    """ELECTRA: replaced-token-detection loss (mean over real tokens)."""
    generator_logits: Tensor | None = None
    """ELECTRA: (N_masked, V) generator logits at the masked positions."""
    replaced: Tensor | None = None
    """ELECTRA: (B, T) bool, which input tokens the generator replaced (the RTD targets)."""


def lm_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over labels != -100; logits (..., V), labels (...). Returns (loss, count)."""
    logits = logits.reshape(-1, logits.size(-1)).float()
    labels = labels.reshape(-1)
    n = (labels != -100).sum()
    loss = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum") / n.clamp(min=1)
    return loss, n


LABEL_ROW_MULTIPLE = 64
"""`label_rows` rounds the rows a language-model head multiplies up to a multiple of this."""


def label_rows(labels: Tensor, multiple: int = LABEL_ROW_MULTIPLE) -> tuple[Tensor, int]:
    """Which positions of ``labels`` (any shape, flattened) a language-model head projects, and how
    many of them carry a label: every labelled position (!= -100) in order, then ignored ones up
    to a multiple of `multiple` rows (or all positions). Returns (indices, n_labelled).

    Masked LM labels a different number of positions every batch. On CPU, oneDNN keeps a kernel
    and its buffers per matrix shape, so a new row count every step grows the process by the
    size of the output layer each time (~17 MB for a 30k x 256 bf16 table; a bert-mini run
    reached 12 GB) and pays for building the kernel. Rounded, the count takes a few values.
    """
    flat = labels.reshape(-1)
    ignored = flat == -100
    n = int(flat.numel() - ignored.sum())
    rows = min(flat.numel(), -(-max(n, 1) // multiple) * multiple)
    return torch.argsort(ignored.to(torch.int8), stable=True)[:rows], n


def linear_cross_entropy(h: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                         chunk: int) -> tuple[Tensor, Tensor]:
    """`lm_loss` of ``F.linear(h, weight, bias)`` without ever holding the (N, V) logits.

    h (..., E), weight (V, E), bias (V,) or None, labels (...) with -100 = ignored. The rows
    `label_rows` picks are projected `chunk` at a time; each chunk's cross-entropy and its
    gradients (with respect to h, weight and bias) are computed at once and the chunk's logits
    dropped, so memory holds one (chunk, V) block instead of the logits, their fp32 copy, the
    log-softmax and its gradient. Matmuls run in the autocast dtype when autocast is on (as
    F.linear would), softmax and the loss in fp32. Returns (loss, count) like `lm_loss`; the
    graph it builds may be backpropagated once.
    """
    rows, n = label_rows(labels)
    h = h.reshape(-1, h.size(-1))[rows]
    labels = labels.reshape(-1)[rows]
    count = torch.tensor(n, device=labels.device)
    loss = _LinearCrossEntropy.apply(h, weight, bias, labels, int(chunk), n)
    return loss, count


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of F.linear(h, weight, bias) against labels, gradients computed in the forward."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, chunk: int,
                n: int) -> Tensor:  # h (N, E), labels (N,): the first n rows labelled, the rest ignored
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        with torch.autocast(device, enabled=False):
            w, x_all = weight.to(dtype), h.to(dtype)
            if n < x_all.size(0):  # the ignored rows as zeros: no value of theirs reaches a gradient
                x_all = torch.cat([x_all[:n], x_all.new_zeros(x_all.size(0) - n, x_all.size(1))])
            grad_h = torch.empty_like(x_all)  # (N, E)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device)  # (V, E)
            grad_b = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=h.device)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            inv = 1.0 / max(n, 1)
            for start in range(0, x_all.size(0), max(1, chunk)):
                x = x_all[start: start + chunk]
                k = min(max(n - start, 0), x.size(0))  # labelled rows of this chunk (the first k)
                y = labels[start: start + k]
                z = torch.mm(x, w.t()).float()  # (c, V) logits of this chunk
                if bias is not None:
                    z += bias.float()
                lse = torch.logsumexp(z[:k], dim=-1)  # (k,)
                total += (lse - z[:k].gather(1, y[:, None]).squeeze(1)).sum()
                z[:k].sub_(lse[:, None]).exp_()  # softmax, in place
                z[torch.arange(k, device=y.device), y] -= 1.0
                z[k:] = 0.0
                z.mul_(inv)  # d(mean loss) / d(logits)
                g = z.to(dtype)
                torch.mm(g, w, out=grad_h[start: start + chunk])
                grad_w += torch.mm(g.t(), x)
                if grad_b is not None:
                    grad_b += z.sum(dim=0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (h.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total * inv

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        scale = grad_out.to(torch.float32)
        gh = (grad_h * scale).to(h_dtype) if ctx.needs_input_grad[0] else None
        gw = grad_w.mul_(scale).to(w_dtype) if ctx.needs_input_grad[1] else None
        gb = grad_b.mul_(scale).to(b_dtype) if grad_b is not None and ctx.needs_input_grad[2] else None
        return gh, gw, gb, None, None, None


def classification_loss(logits: Tensor, labels: Tensor, config: ModelConfig, weight: Tensor | None = None) -> Tensor:
    """Sequence/token classification loss by config.problem_type; logits (..., K)."""
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    if config.problem_type == "multi_label":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    w = None if weight is None else weight.to(logits.device, torch.float32)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), weight=w, ignore_index=-100)


class PretrainedModel(nn.Module):
    """Base of every task model: config, initialization, tied weights, save/load."""

    task: ClassVar[str] = ""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.class_weights: Tensor | None = None
        """Optional per-class loss weights (K,) for imbalanced classification."""

    loss_chunk: int = 0
    """Language-model heads in training: > 0 computes the loss with `linear_cross_entropy` over
    chunks of this many label positions, never holding the full (tokens, V) logits (the output's
    `logits` is then None); 0 = full logits. Set with `use_chunked_loss`."""

    def init_weights(self) -> None:
        init_weights(self, self.config.initializer_range)
        if self.config.norm == "pre":
            scaled_residual_init(self, self.config.num_layers, self.config.initializer_range)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Point output projections at the input embedding matrix when config.tie_embeddings."""

    def tied_parameter_names(self) -> set[str]:
        """Names of parameters that are the same tensor as an earlier one (e.g. a tied LM head)."""
        seen: dict[int, str] = {}
        tied = set()
        for name, p in self.named_parameters(remove_duplicate=False):
            if id(p) in seen:
                tied.add(name)
            else:
                seen[id(p)] = name
        return tied

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def save_pretrained(self, directory: str | Path, tokenizer=None) -> Path:
        """Write config.json (Hugging Face schema) + model.safetensors (+ tokenizer files) to `directory`."""
        from plmkit.models.checkpoint_io import save_model

        return save_model(self, directory, tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> "PretrainedModel":
        from plmkit.models.checkpoint_io import load_model

        return load_model(directory, task=cls.task, **overrides)


def use_chunked_loss(model: nn.Module, chunk: int) -> bool:
    """Set `PretrainedModel.loss_chunk` on `model` (0 = full logits); False when `model` is no
    plmkit model. Only the heads that read it (masked LM, causal LM) change how they compute."""
    if chunk < 0:
        raise ValueError(f"loss chunk must be >= 0 label positions, got {chunk}")
    if not isinstance(model, PretrainedModel):
        return False
    model.loss_chunk = int(chunk)
    return True
