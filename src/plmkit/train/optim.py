"""AdamW with decoupled weight decay on the right parameters, and the learning-rate schedule.

The learning rate is a pure function of the optimizer step (`lr_at`): nothing about the
schedule lives in optimizer or scheduler state, so a resumed run gets the same rates as an
uninterrupted one by construction.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

Schedule = Literal["linear", "cosine", "constant"]

_NO_DECAY_NAME_PARTS = ("bias", "norm", "ln_", "layernorm", "emb")


def lr_at(
    step: int,
    peak_lr: float,
    warmup_steps: int,
    max_steps: int,
    schedule: Schedule = "linear",
    min_lr_ratio: float = 0.0,
) -> float:
    """The learning rate of optimizer step `step` (1-based: the first update is step 1).

    Warmup rises linearly to `peak_lr` over `warmup_steps` (step w gives peak_lr * w /
    warmup_steps, so the first update is not wasted at zero); afterwards "linear" and
    "cosine" decay to `peak_lr * min_lr_ratio` at `max_steps` and stay there; "constant"
    keeps `peak_lr`.
    """
    if schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"schedule: expected linear, cosine or constant, got {schedule!r}")
    if warmup_steps > 0 and step <= warmup_steps:
        return peak_lr * max(step, 0) / warmup_steps
    if schedule == "constant":
        return peak_lr
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * factor)


def _is_no_decay_module(module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding) or "norm" in type(module).__name__.lower()


def split_decay(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of trainable parameters (decay, no_decay).

    No decay for biases, normalization weights and embedding tables, recognised by the
    owning module's type (nn.Embedding, any *Norm), by ndim < 2, or by name parts
    (bias, norm, ln_, layernorm, emb). Tied parameters are listed once, under their first name.
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if _is_no_decay_module(module):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lowered = name.lower()
        if p.ndim < 2 or id(p) in no_decay_ids or any(part in lowered for part in _NO_DECAY_NAME_PARTS):
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW parameter groups: {"params", "weight_decay", "names"} with and without decay."""
    decay, no_decay = split_decay(model)
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay, "names": decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0, "names": no_decay},
    ]
    return [g for g in groups if g["params"]]


def fused_supported(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW kernel can run on these parameters (device type and dtype)."""
    devices = {"cpu", "cuda", "xpu", "mps", "hpu"}
    ok_dtypes = {torch.float32, torch.float16, torch.bfloat16, torch.float64}
    return bool(params) and all(p.device.type in devices and p.dtype in ok_dtypes for p in params)


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | Literal["auto"] = "auto",
) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters, decay only where `split_decay` says.

    `fused="auto"` uses torch's fused kernel (one kernel for all parameters, on CPU and GPU)
    when the parameters allow it; True demands it, False uses the multi-tensor path. Build
    the optimizer after moving the model to its device and wrapping it for parallelism.
    """
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        del g["names"]  # names are for inspection only; optimizer groups hold tensors
    params = [p for g in groups for p in g["params"]]
    use_fused = fused_supported(params) if fused == "auto" else bool(fused)
    if fused is True and not fused_supported(params):
        devices = sorted({f"{p.device.type}/{p.dtype}" for p in params})
        raise ValueError(f"fused_adamw=true is not supported for parameters on {', '.join(devices)}")
    kwargs = {"fused": True} if use_fused else {"foreach": None}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **kwargs)
