"""How each Transformer block runs in training: regional `torch.compile` and activation checkpointing.

Both are applied from outside the model, one `plmkit.models.layers.Block` at a time, by giving
the block an instance-level ``forward`` (the class's code stays untouched, module names and
state dicts do not change, and hooks that DDP / FSDP2 put on the block run outside it):

- **Regional compilation**: each block's forward is compiled with ``fullgraph=True``, so a
  compiled region has no graph break by construction. Embeddings, mask building, the heads
  (the MLM head at masked positions is data-dependent) and the loss stay eager. Every block
  is the same code with other weights, so all blocks share one compiled graph: compiling
  costs about one block's compile, not the whole model's.
- **Activation checkpointing**: each block keeps only its input for the backward pass and
  recomputes its activations there (`torch.utils.checkpoint`, non-reentrant, with the RNG
  state restored, so dropout draws the same masks and gradients equal the plain path's).

Shapes (compiled runs): ``compile_shapes="dynamic"`` is torch's own policy (the first shape is
compiled static; a dimension that changes is recompiled once as dynamic: two compiles in
all); ``"static"`` compiles every shape static and pads each micro-batch's length up to a
multiple of `pad_to_multiple_of` (default `STATIC_MULTIPLE`) so that only a few shapes occur
(packed pretraining rows of one length compile once; fine-tuning batches of lengths bucketed
to multiples of 32 compile once per bucket). Evaluation runs the blocks eagerly
(`BlockRunner.eager`), so eval shapes never compile.

A failed compilation falls back to eager with a warning: the step that failed is run again
eagerly from the same gradients and RNG state (`BlockRunner.retry_eagerly`).

``compile: auto`` (`decide_compile`) compiles only where it was measured to pay: on CUDA, for
runs of at least `AUTO_MIN_STEPS` optimizer steps. On CPU it stays eager: measured on a 2-core
AVX512-BF16 host without AMX, the compiled bf16 step was no faster than plmkit's eager one
(bert-mini 32x128: x0.91 with dropout, x1.00 without), against a cold compile of 10-30 s per
shape. Change the rule here when a quiet A/B (`benchmarks/bench_train.py --compile`) shows a
gain on other hardware.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

AUTO_MIN_STEPS = 1000
"""`compile: auto` compiles runs of at least this many optimizer steps (on CUDA)."""
STATIC_MULTIPLE = 32
"""Static-shape compiles pad micro-batch lengths up to a multiple of this."""
RECOMPILE_LIMIT = 64
"""Compiled graphs kept per code object under static shapes (torch's default of 8 would fall back
to eager after 8 shapes: a few length buckets times a few batch sizes)."""
ShapePolicy = Literal["dynamic", "static"]

_PAD_LABELS = ("labels",)
_PADDABLE = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "segment_ids", "labels")
"""The (B, T) inputs `pad_batch` knows how to pad; a batch with other (B, T) tensors is left alone."""


def decide_compile(setting: bool | str, device: torch.device, steps: int) -> tuple[bool, str]:
    """Whether to compile the blocks, and why (for the log). `setting` is TrainConfig.compile."""
    if setting is True or setting is False:
        return bool(setting), "train.compile is " + str(setting).lower()
    if setting != "auto":
        raise ValueError(f"train.compile: expected true, false or 'auto', got {setting!r}")
    if device.type != "cuda":
        return False, (f"auto: eager on {device.type} (compiling was measured not to pay there; "
                       "set train.compile=true to compile anyway)")
    if steps < AUTO_MIN_STEPS:
        return False, f"auto: {steps} steps to run, compiling pays from {AUTO_MIN_STEPS}"
    return True, f"auto: {steps} steps on {device.type}"


def compiler_available(device: torch.device) -> tuple[bool, str]:
    """Whether torch.compile's default backend can build kernels for `device` ("" or the reason not)."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return False, "no C++ compiler on PATH (inductor builds CPU kernels with one)"
    return True, ""


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The Transformer blocks of `model` (each distinct module once: ALBERT shares one)."""
    from plmkit.models.layers import Block

    return [m for m in model.modules() if isinstance(m, Block)]


class BlockRunner:
    """The per-block forward of one training run: plain, checkpointed and/or compiled.

    `restore()` gives every block back its class's forward (the loop calls it when training ends).
    """

    def __init__(self, model: nn.Module, compile: bool = False, checkpointing: bool = False,
                 shapes: ShapePolicy = "dynamic") -> None:
        if shapes not in ("dynamic", "static"):
            raise ValueError(f"train.compile_shapes: expected 'dynamic' or 'static', got {shapes!r}")
        self.blocks = find_blocks(model)
        self.checkpointing = checkpointing and bool(self.blocks)
        self.compiled = compile and bool(self.blocks)
        self.shapes = shapes
        self.compile_seconds = 0.0
        """Wall time of the steps that compiled (a new input shape), summed."""
        self.compiled_shapes = 0
        self._seen: set[tuple] = set()
        if compile and not self.blocks:
            warnings.warn("train.compile: the model has no plmkit Transformer blocks to compile; running eagerly",
                          stacklevel=2)
        if self.compiled and shapes == "static":
            _raise_recompile_limit(RECOMPILE_LIMIT)
        self._install(self.compiled)

    # ---- forwards ---------------------------------------------------------------------------
    def _install(self, compiled: bool) -> None:
        dynamic = False if self.shapes == "static" else None
        for block in self.blocks:
            block.__dict__.pop("forward", None)
            forward = block.forward  # the class's, bound to this block
            if self.checkpointing:
                forward = _checkpointed(forward)
            if compiled:
                forward = torch.compile(forward, fullgraph=True, dynamic=dynamic)
            if forward is not block.forward:
                block.forward = forward

    def restore(self) -> None:
        """Every block runs its class's forward again (nothing compiled or checkpointed)."""
        for block in self.blocks:
            block.__dict__.pop("forward", None)

    @contextmanager
    def eager(self) -> Iterator[None]:
        """Blocks run their plain forward inside (evaluation: no compile for eval shapes, no
        recomputation under no_grad)."""
        if not (self.compiled or self.checkpointing):
            yield
            return
        self.restore()
        try:
            yield
        finally:
            self._install(self.compiled)

    # ---- shapes and compile time --------------------------------------------------------------
    def prepare(self, batch: dict[str, Any], pad_id: int, multiple: int | None) -> dict[str, Any]:
        """The micro-batch as the blocks will see it: padded to a length multiple under static shapes."""
        if not self.compiled or self.shapes != "static":
            return batch
        return pad_batch(batch, multiple or STATIC_MULTIPLE, pad_id)

    def is_new_shape(self, batches: list[dict[str, Any]]) -> bool:
        """Whether these micro-batches bring an input shape not seen before (so a compile may run)."""
        if not self.compiled:
            return False
        new = False
        for batch in batches:
            key = tuple(sorted((k, tuple(v.shape)) for k, v in batch.items() if isinstance(v, Tensor)))
            if key not in self._seen:
                self._seen.add(key)
                new = True
        return new

    def count_compile(self, seconds: float, graphs_before: int | None) -> bool:
        """Add a step that may have compiled to the compile time; False when it compiled nothing."""
        if graphs_before is not None and compiled_graphs() == graphs_before:
            return False
        self.compile_seconds += seconds
        self.compiled_shapes += 1
        return True

    def retry_eagerly(self, error: BaseException) -> None:
        """Give up compiling after `error` (raised by a step that compiled): warn, run eagerly from now on."""
        warnings.warn(f"torch.compile failed ({type(error).__name__}: {str(error).strip().splitlines()[0][:300]}); "
                      "training continues without compiling (set train.compile=false to skip the attempt)",
                      stacklevel=2)
        logger.debug("compile failure", exc_info=error)
        self.compiled = False
        self._install(False)
        import torch._dynamo

        torch._dynamo.reset()


def compiled_graphs() -> int | None:
    """Graphs torch.compile has built in this process so far (None when torch does not say)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    return int(counters["stats"]["unique_graphs"])


def _raise_recompile_limit(limit: int) -> None:
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    setattr(config, name, max(getattr(config, name), limit))


def _checkpointed(forward: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """`forward` under non-reentrant activation checkpointing while gradients are recorded."""

    def run(*args: Any, **kwargs: Any) -> Tensor:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def pad_batch(batch: dict[str, Any], multiple: int, pad_id: int) -> dict[str, Any]:
    """Pad every (B, T) input of a micro-batch to the next multiple of `multiple` positions.

    input_ids take `pad_id`, labels -100, segment_ids -1 (a segment of padding only), the rest 0;
    without segment_ids an attention_mask marks the padding (created when absent). The model
    computes the same loss on the real tokens. A batch holding other (B, T) tensors (an
    encoder-decoder's decoder inputs, say), or none, is returned unchanged.
    """
    ids = batch.get("input_ids")
    if not isinstance(ids, Tensor) or ids.ndim != 2 or multiple <= 1:
        return batch
    b, t = ids.shape
    extra = -t % multiple
    sequence_keys = {k for k, v in batch.items() if isinstance(v, Tensor) and v.ndim == 2 and v.shape == ids.shape}
    other = [k for k, v in batch.items() if isinstance(v, Tensor) and v.ndim >= 2 and k not in sequence_keys]
    if extra == 0 or not sequence_keys <= set(_PADDABLE) or other:
        return batch
    out = dict(batch)
    if "segment_ids" not in batch and "attention_mask" not in batch:
        out["attention_mask"] = torch.ones_like(ids)
    for key in sequence_keys | ({"attention_mask"} & set(out)):
        value = pad_id if key == "input_ids" else -100 if key in _PAD_LABELS else -1 if key == "segment_ids" else 0
        out[key] = F.pad(out[key], (0, extra), value=value)
    return out


def step_timer() -> Callable[[], float]:
    """Seconds since the call, after waiting for queued device work (so a compile is fully counted)."""
    start = time.perf_counter()

    def elapsed() -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return elapsed
