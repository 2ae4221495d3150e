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


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter in a plmkit model: 0 for the embeddings, i + 1 for block i, num_layers + 1
    for everything above the blocks (final norm, pooler, task heads)."""
    parts = name.split(".")
    if "emb" in parts:
        return 0
    if "blocks" in parts:
        index = parts[parts.index("blocks") + 1]
        if index.isdigit():
            return int(index) + 1
    return num_layers + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW parameter groups {"params", "weight_decay", "lr_scale", "names"}: with and without decay,
    and with layer_decay < 1 one pair per depth, the LR scaled by layer_decay ** (top - depth) so
    the head and top block learn at the full rate and the embeddings slowest (layer-wise LR decay)."""
    decay, no_decay = split_decay(model)
    params = dict(model.named_parameters())
    num_layers = int(getattr(getattr(model, "config", None), "num_layers", 0) or 0)
    top = num_layers + 1
    groups: dict[tuple[int, bool], dict] = {}
    for names, wd in ((decay, weight_decay), (no_decay, 0.0)):
        for n in names:
            depth = layer_depth(n, num_layers) if layer_decay != 1.0 else top
            group = groups.setdefault((depth, wd > 0), {"params": [], "weight_decay": wd, "names": [],
                                                        "lr_scale": layer_decay ** (top - depth)})
            group["params"].append(params[n])
            group["names"].append(n)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[1], k[0]))]


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
    layer_decay: float = 1.0,
) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters, decay only where `split_decay` says, each group's
    LR scaled by its "lr_scale" (layer-wise decay, see `param_groups`; set the rate with `set_lr`).

    `fused="auto"` uses torch's fused kernel (one kernel for all parameters, on CPU and GPU)
    when the parameters allow it; True demands it, False uses the multi-tensor path. Build
    the optimizer after moving the model to its device and wrapping it for parallelism.
    """
    groups = param_groups(model, weight_decay, layer_decay)
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
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **kwargs)
    set_lr(optimizer, lr)
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The rate of every group: `lr` times the group's "lr_scale" (1 without layer-wise decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
