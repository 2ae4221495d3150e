"""Weight formats for fast decoding: bf16 and int8 weight-only linear layers.

Generating one token reads every weight once, so at small batch sizes decoding speed is the
weight bytes divided by memory bandwidth, and the only large gain is fewer bytes per weight:

- ``bf16``: weights and activations in bfloat16 (half the bytes). On CPU every `nn.Linear` is
  swapped for `PackedLinear`, whose weight is pre-packed by oneDNN once (PyTorch's plain bf16
  matrix-vector product on CPU runs far below memory speed).
- ``int8``: weights stored as int8 with one scale per output channel (a quarter of the fp32
  bytes), activations in bfloat16, multiplied by `torch._weight_int8pack_mm` (CPU) for the few
  rows of a decode step; a prefill of many rows dequantizes the weight to bf16 instead. The LM
  head is quantized too; the input embedding stays bf16 (a lookup reads one row).
- ``fp32``: the weights as trained, pre-packed by oneDNN on CPU like bf16 (PyTorch's plain fp32
  `nn.Linear` runs a few rows, e.g. a batch of 8 decode steps, at half the packed speed).

`prepare_for_inference` converts a model in place; the converted model is for inference only
(its linear layers are no longer `nn.Linear`, so save the original, not the converted one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DTYPES = ("fp32", "bf16", "int8")
SMALL_M = 16
"""Int8Linear multiplies up to this many rows with the int8 kernel (its cost grows with the rows)."""


class PackedLinear(nn.Module):
    """`nn.Linear` with its weight pre-packed by oneDNN (CPU, bf16 or fp32): x (..., in) -> (..., out)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        weight = linear.weight.detach().to(dtype)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype))

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


class Int8Linear(nn.Module):
    """Weight-only int8 linear: w ~ q * scale, q int8 (out, in), scale (out,) per output channel.

    x (..., in) in bf16 -> (..., out) in bf16. Symmetric rounding: |w - q * scale| <= scale / 2.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        exact = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        scale = exact.to(torch.bfloat16)
        # Round the scale up, never down, so that |w| / scale <= 127 holds for the stored scale.
        low = scale.float() < exact
        scale[low] = (scale[low].float() * (1 + 2**-7)).to(torch.bfloat16)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # (M, in)
        if x.size(0) <= SMALL_M:
            y = torch._weight_int8pack_mm(x, self.qweight, self.scale)
            y = y if self.bias is None else y + self.bias
        else:  # many rows (a prefill): a bf16 matmul on the dequantized weight is faster
            y = F.linear(x, self.dequantized(torch.bfloat16), self.bias)
        return y.view(*shape[:-1], self.out_features)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weight this layer multiplies by, (out, in)."""
        return self.qweight.to(dtype) * self.scale.to(dtype)[:, None]


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype the model computes in (that of its first floating parameter or buffer)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def weight_format(model: nn.Module) -> str:
    """How the model's weights are stored now: the format `prepare_for_inference` gave it, else
    "bf16" / "fp16" / "fp32" after its floating dtype."""
    converted = getattr(model, "inference_format", None)
    if converted is not None:
        return converted
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(compute_dtype(model), "fp32")


def prepare_for_inference(model: nn.Module, dtype: str) -> nn.Module:
    """Convert `model` in place to the weight format `dtype` ("fp32", "bf16" or "int8"); returns it.

    On CPU every linear layer is replaced (fp32 and bf16: `PackedLinear`; int8: `Int8Linear`);
    on an accelerator bf16 is a plain cast and fp32 changes nothing. Converting again to the same
    format does nothing; to another format is an error (convert the original weights).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    current = getattr(model, "inference_format", None)
    if current is not None:
        if current != dtype:
            raise ValueError(f"the model was converted to {current} weights; load the original weights to "
                             f"convert to {dtype}")
        return model
    if compute_dtype(model) != torch.float32:
        raise ValueError(f"prepare_for_inference converts fp32 weights, got {compute_dtype(model)}")
    device = next(model.parameters()).device
    if dtype == "int8" and device.type != "cpu":
        raise ValueError(f"int8 weights run on CPU only; use bf16 on {device.type}")
    if dtype == "int8":
        _replace_linears(model, Int8Linear)  # quantized from the fp32 weights
    if dtype != "fp32":
        model.to(torch.bfloat16)  # everything else: embeddings, norms, int8 scales and biases
    if dtype != "int8" and device.type == "cpu" and torch.backends.mkldnn.is_available():
        compute = compute_dtype(model)
        _replace_linears(model, lambda linear: PackedLinear(linear, compute))
    model.inference_format = dtype
    return model


def _replace_linears(model: nn.Module, make) -> None:
    """Swap every `nn.Linear` for make(linear); a tied LM head gets its own converted copy."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, make(child))
