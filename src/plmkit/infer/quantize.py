"""Weight formats for fast decoding: fp32, bf16, and int8 / int4 weight-only linear layers.

Generating one token reads every weight once, so at small batch sizes decoding speed is set by
weight bytes over the speed at which a kernel streams them, and the large gains come from fewer
bytes per weight. (On a 2-core Xeon, PyTorch's int8 and int4 CPU kernels stream ~8-10 GB/s from
memory, below its ~22 GB/s: int8 is ~1.7x and int4 ~3x fp32 at batch 1, not 4x and 8x.)

- ``bf16``: weights and activations in bfloat16 (half the bytes). On CPU every `nn.Linear` is
  swapped for `PackedLinear`, whose weight is pre-packed by oneDNN once. bf16 matrix-vector
  products run well below memory speed on CPU, so bf16 gains most at batch 8 and more.
- ``int8``: weights stored as int8 with one scale per output channel (a quarter of the fp32
  bytes), activations in bfloat16, multiplied by `torch._weight_int8pack_mm` (CPU) for the few
  rows of a decode step; a prefill of many rows dequantizes the weight to bf16 instead. The LM
  head is quantized too; the input embedding stays bf16 (a lookup reads one row).
- ``int4``: the Transformer layers' weights in 4 bits, in groups of 32 inputs with their own
  scale and offset (an eighth of the fp32 bytes; `torch._weight_int4pack_mm_for_cpu`); the LM
  head stays int8. The fastest at batch 1 and the least precise; its prefill runs the 4-bit
  kernel on every prompt row (slower than bf16 for long or many prompts).
- ``fp32``: the weights as trained, stored transposed on CPU (`TransposedLinear`).

`prepare_for_inference` converts a model in place; the converted model is for inference only
(its linear layers are no longer `nn.Linear`, so save the original, not the converted one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DTYPES = ("fp32", "bf16", "int8", "int4")
INT4_GROUP = 32
"""Inputs per scale/offset group of int4 weights."""
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
        return _packed_linear(x, self.weight, self.bias)


@torch.compiler.disable
def _packed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """oneDNN's linear on a pre-packed weight. Inductor cannot lower this op (torch 2.13), so a
    compiled decode step (`generate(compile=True)`) calls it eagerly between its compiled pieces."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class TransposedLinear(nn.Module):
    """`nn.Linear` with its weight stored transposed, (in, out): x (..., in) -> (..., out).

    For a few rows (decoding), MKL's fp32 GEMM streams an (in, out) weight faster than the
    (out, in) one of `nn.Linear` (up to 2x at 8 rows); GPT-2's Conv1D stores weights this way.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        y = torch.mm(x, self.weight_t) if self.bias is None else torch.addmm(self.bias, x, self.weight_t)
        return y.view(*shape[:-1], self.out_features)


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


class Int4Linear(nn.Module):
    """Weight-only 4-bit linear (`torch._weight_int4pack_mm_for_cpu`): x (..., in) bf16 -> (..., out) bf16.

    Each row of the weight is cut into groups of `group_size` inputs; a group is stored as 4-bit
    q in [0, 15] with its own scale and offset (asymmetric): w ~ q * scale + low, |error| <= scale / 2.
    Needs in % group_size == 0 and out % 16 == 0 (`int4_fits`).
    """

    def __init__(self, linear: nn.Linear, group_size: int = INT4_GROUP) -> None:
        super().__init__()
        if not int4_fits(linear, group_size):
            raise ValueError(f"int4 needs in_features % {group_size} == 0 and out_features % 16 == 0, "
                             f"got {linear.in_features} -> {linear.out_features}")
        w = linear.weight.detach().float()
        n, k = w.shape
        groups = w.view(n, k // group_size, group_size)  # (out, in / g, g)
        low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
        scale = ((high - low) / 15).clamp(min=1e-8)
        q = torch.round((groups - low) / scale).clamp(0, 15).view(n, k).to(torch.int32)
        # The kernel dequantizes (q - 8) * scale + zero, so zero is the value at q = 8.
        zero = low + 8 * scale
        scale_zero = torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous()  # (in / g, out, 2)
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        self.register_buffer("scale_zero", scale_zero.to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # (M, in)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.group_size, self.scale_zero)
        y = y if self.bias is None else y + self.bias
        return y.view(*shape[:-1], self.out_features)


def int4_fits(linear: nn.Linear, group_size: int = INT4_GROUP) -> bool:
    """Whether the int4 kernel takes this layer's shape."""
    return linear.in_features % group_size == 0 and linear.out_features % 16 == 0


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


def decode_step_bytes(model: nn.Module) -> int:
    """Bytes of weights one decoding step reads: every parameter and buffer in the model's current
    format (int8 / int4 weights with their scales, biases, norms), except embedding tables, of
    which a step reads one row per token. Tensors shared between modules count once."""
    def own(embedding: bool) -> set[int]:
        return {id(t) for m in model.modules() if isinstance(m, nn.Embedding) == embedding
                for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))}

    embeddings = own(True) - own(False)  # a table tied to the LM head is read whole by the head
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen or id(t) in embeddings:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def prepare_for_inference(model: nn.Module, dtype: str) -> nn.Module:
    """Convert `model` in place to the weight format `dtype` (one of `DTYPES`); returns it.

    On CPU every linear layer is replaced (fp32: `TransposedLinear`, bf16: `PackedLinear`, int8:
    `Int8Linear`, int4: `Int4Linear`); on an accelerator bf16 is a plain cast, fp32 changes
    nothing and int8 / int4 are rejected. Converting again to the same format does nothing; to
    another format is an error (convert the original weights).
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
    if dtype in ("int8", "int4") and device.type != "cpu":
        raise ValueError(f"{dtype} weights run on CPU only; use bf16 on {device.type}")
    if dtype == "int4":  # the LM head stays int8 (logit precision), as does any shape the kernel rejects
        head = getattr(model, "lm_head", None)
        _replace_linears(model, lambda lin: Int8Linear(lin) if lin is head or not int4_fits(lin) else Int4Linear(lin))
    if dtype == "int8":
        _replace_linears(model, Int8Linear)  # quantized from the fp32 weights
    if dtype != "fp32":
        model.to(torch.bfloat16)  # everything else: embeddings, norms, int8 scales and biases
    if dtype == "fp32" and device.type == "cpu":
        _replace_linears(model, TransposedLinear)
    if dtype == "bf16" and device.type == "cpu" and torch.backends.mkldnn.is_available():
        _replace_linears(model, lambda linear: PackedLinear(linear, torch.bfloat16))
    model.inference_format = dtype
    return model


def _replace_linears(model: nn.Module, make) -> None:
    """Swap every `nn.Linear` for make(linear); a tied LM head gets its own converted copy."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, make(child))
