"""The one training loop: every recipe and every device count trains through `train`.

One optimizer step = `grad_accum` micro-batches per process. Their losses are weighted by
the number of label positions each one averages over (``out.n_targets``), across
micro-batches and ranks, so accumulating 2 x 4 examples, or splitting 8 examples over two
processes, gives the same update as one batch of 8. Around that: AdamW with an LR that is
a function of the step, gradient clipping, bf16 autocast, a guard that refuses non-finite
updates, periodic evaluation, metrics.jsonl / TensorBoard / a progress bar, atomic
checkpoints and an exact resume, and a final ``save_pretrained`` export.

The output folder is claimed and locked for the whole call (`plmkit.outputs`): a folder of
someone else's files, or one another run is writing, is refused before anything is written.
SIGINT (Ctrl-C) and SIGTERM stop training after the current step: a checkpoint is written and
`plmkit.errors.Interrupted` is raised (exit code 130 / 143 on the command line); `resume="auto"`
then continues exactly. A second signal stops at once.

The data stream is any iterable of model-ready micro-batches (dicts of tensors, passed as
``model(**batch)``) with ``state_dict()`` / ``load_state_dict()`` (see `BatchStream`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from plmkit.config import ConfigError
from plmkit.errors import Interrupted, NonFiniteError, UserError
from plmkit.files import atomic_write_text
from plmkit.models.base import eval_mode, use_chunked_loss
from plmkit.models.layers import use_fast_dropout
from plmkit.outputs import RUN, OutputClaim, claim_output
from plmkit.rundir import FINAL_DIR, LOSS_PLOT, RUN_FILE
from plmkit.train import checkpoint as ckpt
from plmkit.train.allocator import apply_malloc_setting
from plmkit.train.blockwise import BlockRunner, compiled_graphs, compiler_available, decide_compile, step_timer
from plmkit.train.distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    export_pretrained,
    gradient_sync,
    init_distributed,
    parallelize,
    shard_stream,
)
from plmkit.train.metrics_log import METRICS_FILE, MetricsLog, plot_loss_curve
from plmkit.train.model_card import write_model_card
from plmkit.train.optim import build_optimizer, lr_at, set_lr
from plmkit.train.run_record import format_eval_line, format_start_block, plan_warnings, run_plan, run_record

logger = logging.getLogger(__name__)

EvalFn = Callable[[nn.Module], Mapping[str, float]]
Callback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainConfig:
    """Everything the loop needs to know; the `train:` section of a recipe's YAML."""

    lr: float = 5e-4
    """Peak learning rate, reached at the end of warmup."""
    min_lr_ratio: float = 0.1
    """The linear/cosine schedule ends at lr * min_lr_ratio."""
    warmup_steps: int = 0
    """Steps of linear warmup from lr / warmup_steps to lr."""
    warmup_ratio: float | None = None
    """Warm up over this fraction of max_steps instead (e.g. 0.1); None = use warmup_steps."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warmup."""
    max_steps: int = 1000
    """Optimizer steps to train for (resuming continues up to this step)."""
    batch_size: int = 32
    """Examples per micro-batch on each process (the data stream is built with it)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; global batch = batch_size * grad_accum * world size."""
    clip_norm: float | None = 1.0
    """Clip the global gradient norm to this value; None or 0 disables clipping."""
    weight_decay: float = 0.01
    """Decoupled AdamW weight decay (never applied to biases, norms or embeddings)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    layer_decay: float = 1.0
    """Layer-wise LR decay for fine-tuning: the head and top block train at lr, each block below at
    layer_decay times the one above, the embeddings slowest; 1.0 = one rate for all."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """bf16 autocast for the forward pass (weights and optimizer state stay fp32), or fp32; "auto" = bf16
    where the hardware runs bf16 matmuls natively (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16)."""
    eval_every: int = 0
    """Run eval_fn every this many steps and at the end; 0 = only at the end."""
    save_every: int = 1000
    """Write a checkpoint every this many steps and at the end; 0 = no checkpoints."""
    keep_last: int = 2
    """Keep only the newest this many checkpoints; 0 keeps all."""
    log_every: int = 10
    """Write a metrics record (mean loss over the window) every this many steps."""
    seed: int = 0
    """Seed of python, numpy and torch at the start of a fresh run (rank r uses seed + r)."""
    compile: bool | Literal["auto"] = "auto"
    """Compile each Transformer block with torch.compile (regional; heads and loss stay eager; see
    plmkit.train.blockwise). "auto" compiles where it was measured to pay: CUDA runs of at least
    1000 steps (blockwise.AUTO_MIN_STEPS); CPU runs stay eager. A failed compile falls back to eager
    with a warning; the compile time is logged (a "compile" record in metrics.jsonl)."""
    compile_shapes: Literal["dynamic", "static"] = "dynamic"
    """Compiled runs: "dynamic" = torch's policy (static first, a changing length recompiled once as
    dynamic); "static" = every shape static, micro-batch lengths padded to a multiple of compile_bucket."""
    compile_bucket: int = 32
    """compile_shapes=static: pad each micro-batch's length up to a multiple of this (few shapes, each
    compiled once; set it to the row length of packed pretraining data for exactly one shape)."""
    activation_checkpointing: bool = False
    """Recompute each Transformer block's activations in the backward pass instead of keeping them
    (less memory for large models, about one more forward pass of time); gradients are unchanged."""
    fast_dropout: bool = True
    """CPU: draw dropout masks 16 bits at a time and run attention-probability dropout explicitly
    (plmkit.models.layers.use_fast_dropout); the same dropout, other random draws. No effect on GPU.
    On by default: x1.5 on a bert-mini and x1.3 on a GPT-2-shaped bf16 step in a quiet-host A/B
    (benchmarks/README.md); false gives torch's own dropout (its random draws)."""
    loss_chunk: int | Literal["auto"] = "auto"
    """> 0: compute the language-model loss over chunks of this many label positions without the full
    (tokens, vocabulary) logits (plmkit.models.base.linear_cross_entropy); 0 = full logits. "auto"
    (`loss_chunk_for`): 1024 on CPU, where it won a quiet-host A/B (x1.1 on a bert-mini and x1.3 on
    a GPT-2-shaped bf16 step, benchmarks/README.md), full logits on GPU (not measured there)."""
    flush_denormals: bool = True
    """CPU: treat floats under 1.2e-38 (denormals) as zero while training (torch.set_flush_denormal).
    A guard: the AdamW moments of a row that stops getting gradients decay through that range, where
    x86 arithmetic is 10-20x slower (an AdamW step over a 30522 x 256 table of denormal moments:
    ~0.5 s instead of ~0.03 s). Results change only by values under 1.2e-38."""
    malloc: Literal["default", "retain"] = "retain"
    """CPU: "retain" makes glibc malloc keep freed memory for reuse (no per-step page faults on large
    tensors; see plmkit.train.allocator): x1.20 tok/s on a bert-mini pretraining step in an A/B
    (benchmarks/README.md, "Allocator and denormals"), so it is the default; the process keeps its peak
    memory (+29% there). "default" leaves glibc as it is. tcmalloc is used when preloaded (LD_PRELOAD)."""
    fused_adamw: bool | Literal["auto"] = "auto"
    """torch's fused AdamW kernel: "auto" uses it where the device supports it."""
    device: str = "auto"
    """"auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1"; torchrun ranks take cuda:LOCAL_RANK."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """How several processes share the work: replicate (DDP) or shard (FSDP2)."""
    max_nonfinite_skips: int = 0
    """Steps with a NaN/inf loss or gradient are skipped (no update) this many times per run;
    one more stops training with NonFiniteError. 0 = stop at the first."""
    progress: bool = True
    """Show a progress bar (loss, tokens/s, ETA) on rank 0."""
    tensorboard: bool | None = None
    """Mirror metrics to TensorBoard (out_dir/tensorboard): true requires the tensorboard package
    (pip install 'plmkit[tensorboard]'), null uses it when installed, false never."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas: expected two numbers in [0, 1), got {list(self.betas)}")
        positive = ("lr", "max_steps", "batch_size", "grad_accum", "log_every", "eps", "compile_bucket")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        at_least_zero = ("warmup_steps", "eval_every", "save_every", "keep_last", "weight_decay", "max_nonfinite_skips")
        for name in at_least_zero:
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.loss_chunk != "auto" and (isinstance(self.loss_chunk, bool) or not isinstance(self.loss_chunk, int)
                                          or self.loss_chunk < 0):
            raise ConfigError(f"train.loss_chunk must be \"auto\" or an integer >= 0, got {self.loss_chunk!r}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"train.layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.warmup_ratio is not None and not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1) or null, got {self.warmup_ratio}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.clip_norm is not None and self.clip_norm < 0:
            raise ConfigError(f"train.clip_norm must be >= 0 or null, got {self.clip_norm}")

    @property
    def warmup(self) -> int:
        """Warmup steps in effect: round(warmup_ratio * max_steps) when warmup_ratio is set, else warmup_steps."""
        return round(self.warmup_ratio * self.max_steps) if self.warmup_ratio is not None else self.warmup_steps

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (1-based)."""
        return lr_at(step, self.lr, self.warmup, self.max_steps, self.schedule, self.min_lr_ratio)


class BatchStream(Protocol):
    """What `train` reads: model-ready micro-batches and a resumable position.

    Iterating after ``load_state_dict(s)`` must yield exactly the batches that followed the
    moment ``state_dict()`` returned s; when an iterator is exhausted the loop calls
    ``iter()`` again (the next epoch). Under torchrun the loop calls ``shard(rank,
    world_size)`` once before iterating, so each rank reads its own share.
    """

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StopTraining(Exception):
    """Raise from a callback to end training after the current step (checkpoint + export still run)."""


@dataclass
class TrainResult:
    """What a call to `train` did."""

    out_dir: Path
    step: int
    """The last completed optimizer step."""
    start_step: int
    """The step this call started from (0, or the resumed checkpoint's step)."""
    losses: list[float]
    """Training loss of each step of this call (steps start_step + 1 .. step; NaN if skipped)."""
    eval_history: list[dict[str, float]]
    """Each evaluation's metrics, with its "step"."""
    tokens_seen: int
    """Input tokens processed over all ranks since step 0."""
    skipped_steps: int
    """Steps skipped for non-finite values since step 0."""
    elapsed_s: float
    last_checkpoint: Path | None
    final_dir: Path | None
    """out_dir/final written by model.save_pretrained, or None if the model has no such method."""
    resumed_from: Path | None
    stopped_early: bool
    compile_s: float = 0.0
    """Wall time of the steps that compiled (0 when nothing was compiled)."""


@dataclass
class _Progress:
    """Counters that a checkpoint carries so the resumed run continues them exactly."""

    step: int = 0
    tokens_seen: int = 0
    nonfinite_skips: int = 0
    pending_losses: list[float] = field(default_factory=list)
    """Losses since the last metrics record (the record averages them)."""


@dataclass
class _StepStats:
    loss: float
    grad_norm: float
    lr: float
    tokens: int
    skipped: bool


def versions() -> dict[str, str]:
    """Versions of python, torch, numpy and plmkit, for run.json."""
    import importlib.metadata

    import numpy

    try:
        plmkit_version = importlib.metadata.version("plmkit")
    except importlib.metadata.PackageNotFoundError:
        plmkit_version = "unknown"
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "plmkit": plmkit_version}


def train(
    model: nn.Module,
    stream: BatchStream,
    cfg: TrainConfig,
    out_dir: str | Path,
    eval_fn: EvalFn | None = None,
    resume: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    tokenizer: Any = None,
    info: Mapping[str, Any] | None = None,
    inputs: Sequence[str | Path] = (),
) -> TrainResult:
    """Train `model` on `stream` for cfg.max_steps optimizer steps; write everything to `out_dir`.

    model: returns an output with `.loss` (scalar mean) and `.n_targets` (label positions)
        when called as ``model(**batch)``; moved to the device and wrapped for parallelism here.
    eval_fn: ``eval_fn(model) -> {"name": value}``, called on every rank in eval mode under
        no_grad every cfg.eval_every steps and at the end; rank 0 logs the result.
    resume: None (fresh; an error if out_dir holds checkpoints), "auto" (newest complete
        checkpoint in out_dir, else fresh) or the path of a checkpoint / run folder.
    callbacks: ``cb(step, metrics)`` after each step on every rank; raise StopTraining to stop.
    tokenizer: saved with the final export (out_dir/final) when given.
    info: what the recipe knows about the run (examples, labels, chosen settings), printed in the
        start block and kept in run.json.
    inputs: the files the run reads (data, shard folders): their sizes and hashes go into run.json.

    Prints a start block (rank 0) and each evaluation as it happens. Writes out_dir/run.json
    (config, versions, seed, plan, the command lines of the run and its resumes, git commit,
    inputs) before step 1, metrics.jsonl, checkpoint-XXXXXXXX folders, final/ (with a model
    card, README.md) and loss.png.
    """
    trainer = _Trainer(model, stream, cfg, Path(out_dir), eval_fn, list(callbacks), tokenizer)
    trainer.info, trainer.inputs = dict(info or {}), list(inputs)
    return trainer.run(resume)


class _Trainer:
    """State of one `train` call; each method is one stage of the loop."""

    def __init__(self, model: nn.Module, stream: BatchStream, cfg: TrainConfig, out_dir: Path,
                 eval_fn: EvalFn | None, callbacks: list[Callback], tokenizer: Any) -> None:
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        self.cfg, self.stream, self.out_dir = cfg, stream, out_dir
        self.eval_fn, self.callbacks, self.tokenizer = eval_fn, callbacks, tokenizer
        self.env: DistEnv = init_distributed(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.env.device)
        self.inner = model.to(self.env.device)
        self.model = parallelize(self.inner, self.env, cfg.parallel)
        self.blocks = self.block_runner()
        self.optimizer = build_optimizer(self.inner, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps, cfg.fused_adamw,
                                         cfg.layer_decay)
        self.params = [p for p in self.inner.parameters() if p.requires_grad]
        self.log = MetricsLog(out_dir, enabled=False)  # the real one once the folder is claimed (setup)
        self.claim: OutputClaim | None = None
        self.signal: int | None = None
        """SIGINT / SIGTERM received on this process; all ranks stop once any rank got one."""
        self.stop_requested = False
        self._old_handlers: dict[int, Any] = {}
        self.progress = _Progress()
        self.losses: list[float] = []
        self.eval_history: list[dict[str, float]] = []
        self.last_saved: Path | None = None
        self._iter: Iterator[dict[str, Any]] | None = None
        self._window = (time.perf_counter(), 0)
        self.info: dict[str, Any] = {}
        self.inputs: list[str | Path] = []

    # ----------------------------------------------------------------------- setup

    def block_runner(self) -> BlockRunner:
        """Apply the step's speed settings to the model: compiled / checkpointed blocks, fast
        dropout, chunked loss, the allocator (each logged)."""
        cfg, device = self.cfg, self.env.device
        compile_on, why = decide_compile(cfg.compile, device, cfg.max_steps)
        usable, missing = compiler_available(device)
        if compile_on and not usable:
            warnings.warn(f"train.compile: {missing}; training without compiling", stacklevel=3)
            compile_on, why = False, missing
        runner = BlockRunner(self.inner, compile=compile_on, checkpointing=cfg.activation_checkpointing,
                             shapes=cfg.compile_shapes)
        use_fast_dropout(self.inner, cfg.fast_dropout)
        chunk = loss_chunk_for(cfg.loss_chunk, device)
        use_chunked_loss(self.inner, chunk)
        allocator = apply_malloc_setting(cfg.malloc) if device.type == "cpu" else "allocator: device"
        self.flushed = cfg.flush_denormals and device.type == "cpu" and flush_denormals()
        if self.env.is_main:
            logger.info("compile: %s (%s); activation checkpointing: %s; loss: %s; denormals: %s; %s",
                        "on" if runner.compiled else "off", why, "on" if runner.checkpointing else "off",
                        f"chunks of {chunk} label positions" if chunk else "full logits",
                        "flushed to zero" if denormals_flushed() else "kept", allocator)
        return runner

    def restore_model(self) -> None:
        """Give the user's model back as it came: plain blocks, torch dropout, full logits."""
        self.blocks.restore()
        use_fast_dropout(self.inner, False)
        use_chunked_loss(self.inner, 0)
        if self.flushed:  # only what this run turned on
            torch.set_flush_denormal(False)

    def geometry(self) -> dict[str, int]:
        """The fields a resume must keep (see checkpoint.RESUME_FIELDS)."""
        return {"batch_size": self.cfg.batch_size, "grad_accum": self.cfg.grad_accum,
                "world_size": self.env.world_size}

    def setup(self, resume: str | Path | None) -> Path | None:
        """Claim and lock out_dir, load the checkpoint (or seed a fresh run), shard the stream, write run.json."""
        source = getattr(self.inner, "loaded_from", None)
        if self.tokenizer is not None and source is not None:
            _check_tokenizer(self.tokenizer, Path(source))
        ckpt.together(self.env, lambda: self.claim_out_dir(source) if self.env.is_main else None)
        self.log = MetricsLog(self.out_dir, enabled=self.env.is_main, tensorboard=self.cfg.tensorboard)
        shard_stream(self.stream, self.env)
        path, saved = ckpt.load_resume(self.out_dir, resume, self.model, self.optimizer, self.stream,
                                       self.geometry(), self.env)
        if saved is None:
            ckpt.seed_everything(self.cfg.seed + self.env.rank)
        else:
            self.progress = _Progress(step=saved["step"], tokens_seen=saved["tokens_seen"],
                                      nonfinite_skips=saved["nonfinite_skips"],
                                      pending_losses=list(saved["pending_losses"]))
            self.last_saved = path
        self.log.truncate_after(self.progress.step)
        if self.env.is_main:
            plan = self.plan()
            self.write_run_json(path, plan)
            announce(plan)
        barrier(self.env)
        return path

    def plan(self) -> dict[str, Any]:
        """The facts of this run before its first step (`plmkit.train.run_record.run_plan`)."""
        return run_plan(self.cfg, out_dir=self.out_dir, device=str(self.env.device), precision=self.precision,
                        world_size=self.env.world_size, parameters=sum(p.numel() for p in self.inner.parameters()),
                        trainable=sum(p.numel() for p in self.params), start_step=self.progress.step,
                        stream=self.stream, info=self.info)

    def claim_out_dir(self, source: str | None) -> None:
        """Lock out_dir for this run (rank 0); refuse a folder of other files or holding the model's source."""
        self.claim = claim_output(self.out_dir, RUN, inputs=[source] if source else [])
        self.claim.ensure()
        ckpt.clean_partial(self.out_dir)

    def write_run_json(self, resumed_from: Path | None, plan: dict[str, Any]) -> None:
        """out_dir/run.json: resolved config, seed, versions, device, model summary, the plan, and the
        record of every command that started or resumed the run (`run_record`)."""
        model_cfg = getattr(self.inner, "config", None)
        previous = read_run_json(self.out_dir) if resumed_from is not None else None
        info = {
            "config": dataclasses.asdict(self.cfg),
            "seed": self.cfg.seed,
            "versions": versions(),
            "device": str(self.env.device),
            "precision": self.precision,
            "world_size": self.env.world_size,
            "model": {
                "class": type(self.inner).__name__,
                "task": getattr(self.inner, "task", None),
                "parameters": sum(p.numel() for p in self.params),
                "config": model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else None,
            },
            "resumed_from": None if resumed_from is None else str(resumed_from),
            "start_step": self.progress.step,
            "command": sys.argv,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "plan": plan,
            **run_record(previous, resumed=resumed_from is not None, start_step=self.progress.step,
                         inputs=[*self.inputs, *_stream_inputs(self.stream)]),
        }
        atomic_write_text(self.out_dir / RUN_FILE, json.dumps(info, indent=2, default=str))

    # ----------------------------------------------------------------------- one step

    def next_batch(self) -> dict[str, Any]:
        """The next micro-batch, on the device; a finished iterator starts the next epoch."""
        if self._iter is None:
            self._iter = iter(self.stream)
        try:
            batch = next(self._iter)
        except StopIteration:
            self._iter = iter(self.stream)
            try:
                batch = next(self._iter)
            except StopIteration:
                raise ValueError("the data stream yielded no batches") from None
        dev = self.env.device
        if dev.type != "cpu":
            batch = _without_full_mask(batch)
        return {k: v.to(dev, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def micro_batches(self) -> list[tuple[dict[str, Any], Tensor]]:
        """The step's grad_accum micro-batches, each as the model will see it (padded under static
        compiled shapes) with its count of real input tokens (taken before any padding)."""
        out = []
        for _ in range(self.cfg.grad_accum):
            batch = self.next_batch()
            tokens = _count_tokens(batch, self.env.device)
            out.append((self.blocks.prepare(batch, self.pad_id, self.cfg.compile_bucket), tokens))
        return out

    @property
    def pad_id(self) -> int:
        return int(getattr(getattr(self.inner, "config", None), "pad_token_id", 0) or 0)

    def micro_step(self, batch: dict[str, Any], tokens: Tensor, sync: bool) -> Tensor:
        """Forward + backward of one micro-batch with loss * n_targets; returns [loss*n, n, tokens].

        Gradients accumulate in place in each parameter's .grad (the first micro-batch's backward
        creates them); nothing is copied between micro-batches.
        """
        with gradient_sync(self.model, sync):
            with self.autocast():
                out = self.model(**batch)
            loss = getattr(out, "loss", None)
            if loss is None:
                raise ValueError(f"the model returned no loss; does the batch have labels? keys: {sorted(batch)}")
            n = _n_targets(out, batch, loss.device)
            (loss * n).backward()
        dtype = torch.float32 if loss.device.type == "mps" else torch.float64
        return torch.stack([loss.detach().to(dtype) * n, n.to(dtype), tokens.to(loss.device, dtype)])

    def accumulate(self, step: int, batches: list[tuple[dict[str, Any], Tensor]]) -> Tensor:
        """All micro-batches of a step; a step that compiles is timed, and if compiling fails it
        runs again eagerly from the same (empty) gradients and RNG state."""
        def run() -> Tensor:
            last = len(batches) - 1
            return sum(self.micro_step(b, n, i == last) for i, (b, n) in enumerate(batches))  # type: ignore[return-value]

        if not self.blocks.is_new_shape([b for b, _ in batches]):
            return run()
        rng, elapsed, graphs = ckpt.capture_rng_state(), step_timer(), compiled_graphs()
        try:
            totals = run()
        except Exception as error:  # noqa: BLE001 - this step compiled: retried eagerly, a real error recurs there
            self.blocks.retry_eagerly(error)
            self.optimizer.zero_grad(set_to_none=True)
            ckpt.restore_rng_state(rng)
            return run()
        seconds = elapsed()
        if not self.blocks.count_compile(seconds, graphs):
            return totals
        self.log.log({"kind": "compile", "step": step, "seconds": seconds, "shapes": self.blocks.compiled_shapes})
        if self.env.is_main:
            logger.info("step %d: compiled the blocks for a new input shape in %.1f s (%d shapes, %.1f s so far)",
                        step, seconds, self.blocks.compiled_shapes, self.blocks.compile_seconds)
        return totals

    def train_step(self, step: int) -> _StepStats:
        """One optimizer step: accumulate, normalize by the global target count, clip, guard, update."""
        cfg = self.cfg
        lr = cfg.lr_at(step)
        totals = self.accumulate(step, self.micro_batches())
        stop = torch.tensor([float(self.signal is not None)], dtype=totals.dtype, device=totals.device)
        loss_sum, n_total, tokens, stops = all_reduce_sum(torch.cat([totals, stop]), self.env).tolist()
        self.stop_requested = stops > 0  # every rank sees the same sum: all stop after the same step
        loss = loss_sum / n_total if n_total > 0 else math.nan
        grads = [p.grad for p in self.params if p.grad is not None]
        # each rank holds the (DDP/FSDP-averaged) sum of loss_i * n_i: world / n_total makes it the global mean
        norm = self.scale_and_clip(grads, self.env.world_size / n_total if n_total > 0 else 1.0) if grads else 0.0
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.handle_nonfinite(step, loss, norm)
            return _StepStats(loss, norm, lr, int(tokens), skipped=True)
        set_lr(self.optimizer, lr)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return _StepStats(loss, norm, lr, int(tokens), skipped=False)

    def scale_and_clip(self, grads: list[Tensor], scale: float) -> float:
        """Multiply the gradients by `scale`, clipped to cfg.clip_norm (when set), in one pass over
        them; returns the global norm of the scaled gradients before clipping."""
        norm = _total_norm(grads) * scale
        if not math.isfinite(norm):
            return norm  # the step is skipped: no need to touch the gradients
        max_norm = self.cfg.clip_norm if self.cfg.clip_norm else math.inf
        factor = scale * min(1.0, max_norm / (norm + 1e-6))
        if factor != 1.0:
            torch._foreach_mul_(grads, factor)
        return norm

    def handle_nonfinite(self, step: int, loss: float, norm: float) -> None:
        """Skip the update, or stop with NonFiniteError once the allowance is used up."""
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.nonfinite_skips += 1
        used, allowed = self.progress.nonfinite_skips, self.cfg.max_nonfinite_skips
        what = f"step {step}: loss {loss}, gradient norm {norm}"
        if used > allowed:
            raise NonFiniteError(
                f"{what}; stopped before the optimizer step (weights are those after step {step - 1}). "
                f"Lower train.lr, set train.clip_norm, check the data, or allow skipping with "
                f"train.max_nonfinite_skips (now {allowed})"
            )
        logger.warning("%s; skipped this update (%d of %d allowed skips)", what, used, allowed)

    # ----------------------------------------------------------------------- around the step

    def record(self, step: int, stats: _StepStats, pbar: tqdm) -> dict[str, float]:
        """Update counters and the progress bar; every log_every steps write a metrics record."""
        prog = self.progress
        prog.step = step
        prog.tokens_seen += stats.tokens
        prog.pending_losses.append(stats.loss)
        self.losses.append(stats.loss)
        metrics = {"loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
                   "tokens": float(prog.tokens_seen), "skipped": float(stats.skipped)}
        pbar.update(1)
        if step % self.cfg.log_every == 0 or step == self.cfg.max_steps:
            now = time.perf_counter()
            start, start_tokens = self._window
            rate = (prog.tokens_seen - start_tokens) / max(now - start, 1e-9)
            finite = [x for x in prog.pending_losses if math.isfinite(x)]
            mean = sum(finite) / len(finite) if finite else math.nan
            self.log.log({"kind": "train", "step": step, "loss": mean, "lr": stats.lr, "grad_norm": stats.grad_norm,
                          "tokens": prog.tokens_seen, "tokens_per_s": rate, "skipped": prog.nonfinite_skips})
            pbar.set_postfix(loss=f"{mean:.4f}", lr=f"{stats.lr:.2e}", tok_s=f"{rate:,.0f}", refresh=False)
            prog.pending_losses = []
            self._window = (now, prog.tokens_seen)
        return metrics

    def evaluate(self, step: int) -> dict[str, float]:
        """Run eval_fn on the user's model in eval mode; log and return its metrics."""
        with eval_mode(self.inner), torch.no_grad(), self.autocast(), self.blocks.eager():
            raw = self.eval_fn(self.inner)  # type: ignore[misc]
        if not isinstance(raw, Mapping):
            raise TypeError(f"eval_fn must return a mapping of metric name -> number, got {type(raw).__name__}")
        metrics = {str(k): float(v) for k, v in raw.items()}
        self.eval_history.append({"step": step, **metrics})
        self.log.log({"kind": "eval", "step": step, **metrics})
        if self.env.is_main:
            tqdm.write(format_eval_line(step, self.cfg.max_steps, metrics), file=sys.stderr)
        return metrics

    def save(self, step: int) -> None:
        state = {**self.geometry(), "tokens_seen": self.progress.tokens_seen,
                 "nonfinite_skips": self.progress.nonfinite_skips, "pending_losses": self.progress.pending_losses,
                 "max_steps": self.cfg.max_steps, "config": dataclasses.asdict(self.cfg)}
        self.last_saved = ckpt.save_checkpoint(self.out_dir, step, self.model, self.optimizer, self.stream,
                                               state, self.env, self.cfg.keep_last)

    def after_step(self, step: int, metrics: dict[str, float]) -> bool:
        """Evaluate, checkpoint and run callbacks; True when a callback asked to stop."""
        cfg, final = self.cfg, step == self.cfg.max_steps
        if self.eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or final):
            metrics.update({f"eval_{k}": v for k, v in self.evaluate(step).items()})
        if cfg.save_every and step % cfg.save_every == 0:
            self.save(step)
        stop = False
        for callback in self.callbacks:
            try:
                callback(step, metrics)
            except StopTraining:
                stop = True
        return stop

    # ----------------------------------------------------------------------- the loop

    def run(self, resume: str | Path | None) -> TrainResult:
        started = time.perf_counter()
        try:
            resumed_from = self.setup(resume)
            start_step = self.progress.step
            self.inner.train()
            pbar = tqdm(total=self.cfg.max_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=not (self.env.is_main and self.cfg.progress))
            stopped = False
            self._window = (time.perf_counter(), self.progress.tokens_seen)
            self.catch_signals()
            try:
                while self.progress.step < self.cfg.max_steps and not stopped and not self.signalled():
                    step = self.progress.step + 1
                    metrics = self.record(step, self.train_step(step), pbar)
                    stopped = self.after_step(step, metrics)
            finally:
                pbar.close()
                self.log.close()
            if self.signalled() and self.progress.step < self.cfg.max_steps and not stopped:
                self.interrupt(start_step)
            return self.finish(started, start_step, resumed_from, stopped)
        finally:
            self.restore_signals()
            self.restore_model()
            if self.claim is not None:
                self.claim.release()

    # ----------------------------------------------------------------------- signals

    def catch_signals(self) -> None:
        """SIGINT / SIGTERM set a flag (the main thread only; other threads cannot install handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[signum] = signal.signal(signum, self.on_signal)

    def signalled(self) -> bool:
        """Whether to stop after this step: one process stops on its own signal, several processes
        once the step's all-reduce carried one (so they all stop after the same step)."""
        return self.stop_requested or (self.signal is not None and not self.env.distributed)

    def restore_signals(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers = {}

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # the second one: stop at once
            self.restore_signals()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signal = signum
        if self.env.is_main:
            print(f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)

    def interrupt(self, start_step: int) -> None:
        """Checkpoint the last completed step (unless just saved) and raise Interrupted."""
        step = self.progress.step
        if step > start_step and (self.last_saved is None or self.last_saved.name != ckpt.checkpoint_name(step)):
            self.save(step)
        signum = self.signal or signal.SIGTERM
        where = f"checkpoint {self.last_saved}" if self.last_saved is not None else "no checkpoint (no step done)"
        raise Interrupted(f"{signal.Signals(signum).name}: training stopped after step {step} of "
                          f"{self.cfg.max_steps}; {where}. Continue with --resume auto", signum)

    def finish(self, started: float, start_step: int, resumed_from: Path | None, stopped: bool) -> TrainResult:
        """Final checkpoint (if the last step was not saved), export to out_dir/final, loss plot."""
        step = self.progress.step
        if self.cfg.save_every and step > start_step and (self.last_saved is None or
                                                          self.last_saved.name != ckpt.checkpoint_name(step)):
            self.save(step)
        final_dir = export_pretrained(self.model, self.out_dir / FINAL_DIR, self.env, self.tokenizer)
        if self.env.is_main:
            plot_loss_curve(self.out_dir / METRICS_FILE, self.out_dir / LOSS_PLOT)
            if final_dir is not None:
                write_model_card(final_dir)
        return TrainResult(
            out_dir=self.out_dir, step=step, start_step=start_step, losses=self.losses,
            eval_history=self.eval_history, tokens_seen=self.progress.tokens_seen,
            skipped_steps=self.progress.nonfinite_skips, elapsed_s=time.perf_counter() - started,
            last_checkpoint=self.last_saved, final_dir=final_dir, resumed_from=resumed_from, stopped_early=stopped,
            compile_s=self.blocks.compile_seconds,
        )


def announce(plan: dict[str, Any]) -> None:
    """Print the start block and any warning about the plan (stderr, beside the progress bar)."""
    print(format_start_block(plan), file=sys.stderr, flush=True)
    for warning in plan_warnings(plan):
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def read_run_json(out_dir: Path) -> dict[str, Any] | None:
    """out_dir/run.json as a dict; None when absent or unreadable."""
    try:
        data = json.loads((out_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stream_inputs(stream: Any) -> list[str]:
    """The input paths a stream names in its ``describe()`` (e.g. the shard folders), if any."""
    described = stream.describe() if callable(getattr(stream, "describe", None)) else {}
    return [str(p) for p in described.get("inputs", ())]


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "bf16" or "fp32" for a TrainConfig.precision; "auto" picks bf16 where it runs natively."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


CPU_LOSS_CHUNK = 1024
"""Label positions per chunk of the language-model loss that loss_chunk "auto" uses on CPU."""


def loss_chunk_for(setting: int | str, device: torch.device) -> int:
    """The label positions per loss chunk that TrainConfig.loss_chunk gives on `device` (0 = full logits)."""
    if setting == "auto":
        return CPU_LOSS_CHUNK if device.type == "cpu" else 0
    return int(setting)


def denormals_flushed() -> bool:
    """Whether this CPU thread now flushes denormal floats to zero."""
    return (torch.tensor([1e-39]) * 1.0).item() == 0.0


def flush_denormals() -> bool:
    """Flush denormal floats to zero from now on (TrainConfig.flush_denormals); True when this
    call turned it on, False when it was on already or the CPU cannot."""
    return not denormals_flushed() and torch.set_flush_denormal(True)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"amx_bf16", "avx512_bf16"} & set(flags.split()))


def _check_tokenizer(tokenizer: Any, model_dir: Path) -> None:
    """UserError when the run's tokenizer would give other ids than the one saved with the model."""
    from plmkit.data.tokenizer import Tokenizer, tokenizer_differences

    if not isinstance(tokenizer, Tokenizer) or not any(
            (model_dir / n).is_file() for n in ("tokenizer.json", "vocab.txt", "vocab.json")):
        return
    differences = tokenizer_differences(Tokenizer.load(model_dir), tokenizer)
    if differences:
        mine = tokenizer.source if tokenizer.source is not None else "the given tokenizer"
        raise UserError(
            f"the tokenizer of this run ({mine}) is not the one saved with the model it starts from ({model_dir}): "
            f"{'; '.join(differences)}. The model's token ids would mean other tokens. Use the model's tokenizer "
            f"(--tokenizer {model_dir}), or rebuild the shards with it: plmkit prepare CORPUS --tokenizer "
            f"{model_dir} -o NEW_SHARDS")


def _without_full_mask(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without its attention_mask when that marks every token real (read while still on
    the host: free). Models treat a missing mask as all real, and on a GPU the model then keeps
    SDPA's flash kernels (no mask) without reading the mask back from the device."""
    mask = batch.get("attention_mask")
    if isinstance(mask, Tensor) and mask.device.type == "cpu" and bool(mask.all()):
        return {k: v for k, v in batch.items() if k != "attention_mask"}
    return batch


def _total_norm(grads: list[Tensor]) -> float:
    """The global 2-norm of `grads` (plain tensors, or FSDP2's DTensor shards)."""
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        norm = torch.nn.utils.get_total_norm(grads)
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)


def _n_targets(out: Any, batch: dict[str, Any], device: torch.device) -> Tensor:
    """Label positions the loss averaged over; falls back to the batch size."""
    n = getattr(out, "n_targets", None)
    if n is None:
        first = next((v for v in batch.values() if isinstance(v, Tensor) and v.ndim > 0), None)
        n = first.size(0) if first is not None else 1
    return torch.as_tensor(n, device=device)


def _count_tokens(batch: dict[str, Any], device: torch.device) -> Tensor:
    """Real input tokens of a micro-batch (attention_mask sum, else input_ids size)."""
    mask = batch.get("attention_mask")
    if isinstance(mask, Tensor):
        return mask.sum().to(device)
    ids = batch.get("input_ids")
    return torch.tensor(ids.numel() if isinstance(ids, Tensor) else 0, device=device)
