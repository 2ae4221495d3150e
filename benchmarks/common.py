"""Shared pieces of the plmkit-vs-transformers benchmarks: timing, matmul peak, FLOPs, batches, tables.

On a shared, noisy CPU host, absolute throughput drifts by tens of percent within a minute, so:
  - both implementations run in the same process, interleaved (A B, then B A, ...), for several rounds;
  - each figure is the median over >= 5 timed steps after warm-up;
  - MFU divides by a matmul peak measured in the same run (p90 of per-iteration torch.mm throughput
    on 2048^2 and 4096^2 squares, sampled at the start and the end of the run).
Ratios (plmkit / transformers) are the figures to trust; absolute numbers are +-20% or worse.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from plmkit.config import ModelConfig, model_config

THREADS = 2
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def setup(threads: int = THREADS) -> None:
    """Fix the thread count (the reference figures use 2), make runs repeatable, quiet HF warnings."""
    import transformers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()


def environment() -> str:
    """One line describing what the numbers were measured on."""
    import transformers

    preload = os.environ.get("LD_PRELOAD", "") or "none"
    return (f"torch {torch.__version__}, transformers {transformers.__version__}, "
            f"threads {torch.get_num_threads()}, {platform.machine()} {os.cpu_count()} cpus, "
            f"LD_PRELOAD={preload}, load avg {os.getloadavg()[0]:.1f}")


# --------------------------------------------------------------------------- matmul peak


def sync(device: torch.device | str = "cpu") -> None:
    """Wait for queued work on `device` (a no-op on CPU), so a host clock measures it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class PeakMeter:
    """Per-iteration torch.mm throughput samples (GFLOP/s) per dtype; `peak` is their p90.

    On CUDA (tf32 off for fp32) the squares are 4096^2 and 8192^2, each product timed after a sync.
    """

    sizes: tuple[int, ...] = (2048, 4096)
    samples: dict[str, list[float]] = field(default_factory=dict)
    device: str = "cpu"

    def measure(self, precisions: Sequence[str], seconds: float = 2.0) -> None:
        """Sample each size for about `seconds` per dtype (at least 2 iterations per size)."""
        sizes = (4096, 8192) if torch.device(self.device).type == "cuda" else self.sizes
        for name in precisions:
            dtype = DTYPES[name]
            for n in sizes:
                a = torch.randn(n, n, dtype=dtype, device=self.device)
                b = torch.randn(n, n, dtype=dtype, device=self.device)
                torch.mm(a, b)  # warm-up: first call initializes the kernel
                sync(self.device)
                start = time.perf_counter()
                iters = 0
                while iters < 2 or time.perf_counter() - start < seconds / len(sizes):
                    t0 = time.perf_counter()
                    torch.mm(a, b)
                    sync(self.device)
                    self.samples.setdefault(name, []).append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
                    iters += 1
                del a, b

    def peak(self, precision: str) -> float:
        """p90 of the samples in GFLOP/s (NaN when none were taken)."""
        values = self.samples.get(precision)
        return float(np.percentile(values, 90)) if values else float("nan")

    def summary(self) -> str:
        return ", ".join(f"{k} p90 {self.peak(k):.0f} GFLOP/s (n={len(v)}, min {min(v):.0f}, max {max(v):.0f})"
                         for k, v in self.samples.items())


# --------------------------------------------------------------------------- interleaved timing


@dataclass
class Timing:
    """Per-step results of one implementation: seconds and work units (tokens or sequences)."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    """Process CPU time (user + system, all threads) of each step: insensitive to waiting for a CPU."""
    units: list[float] = field(default_factory=list)
    round_of: list[int] = field(default_factory=list)

    @property
    def median_rate(self) -> float:
        """Median over steps of units / second."""
        return statistics.median(u / s for u, s in zip(self.units, self.seconds))

    @property
    def median_cpu_rate(self) -> float:
        """Median over steps of units / CPU second."""
        return statistics.median(u / s for u, s in zip(self.units, self.cpu_seconds))

    @property
    def total_cpu_rate(self) -> float:
        return sum(self.units) / sum(self.cpu_seconds)

    @property
    def total_rate(self) -> float:
        """Total units / total seconds (for steps of unequal size by design)."""
        return sum(self.units) / sum(self.seconds)

    def round_rates(self) -> list[float]:
        rounds = sorted(set(self.round_of))
        return [statistics.median(u / s for u, s, r in zip(self.units, self.seconds, self.round_of) if r == k)
                for k in rounds]


Step = Callable[[int], float]
"""A step function: step(i) runs the i-th step and returns the work units it processed."""


def interleave(steps: dict[str, Step], warmup: int, rounds: int, per_round: int) -> dict[str, Timing]:
    """Run each step function in interleaved rounds (A B, then B A, ...) and time every step.

    warmup steps per implementation are run first (also interleaved) and not timed. Each round
    runs `per_round` timed steps of one implementation, then of the other; the order flips every
    round so that neither always runs right after the other.
    """
    names = list(steps)
    for i in range(warmup):
        for name in names:
            steps[name](i)
    out = {name: Timing() for name in names}
    counter = {name: warmup for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            for _ in range(per_round):
                gc.collect()
                c0, t0 = time.process_time(), time.perf_counter()
                units = steps[name](counter[name])
                out[name].seconds.append(time.perf_counter() - t0)
                out[name].cpu_seconds.append(time.process_time() - c0)
                out[name].units.append(units)
                out[name].round_of.append(r)
                counter[name] += 1
    return out


def ratio_spread(a: Timing, b: Timing) -> tuple[float, float]:
    """(min, max) over rounds of b's round-median rate / a's: how stable the ratio was."""
    ratios = [rb / ra for ra, rb in zip(a.round_rates(), b.round_rates())]
    return min(ratios), max(ratios)


# --------------------------------------------------------------------------- configs


WORKLOAD_PRESETS = {
    "bert-mini": ("bert-mini", ["dropout=0.1", "attention_dropout=0.1"]),  # BERT's dropout (the preset pretrains without)
    "bert-base": ("bert-base", []),
    "gpt-small": ("gpt2-small", ["hidden_size=256", "num_layers=4", "num_heads=4", "intermediate_size=1024"]),
    "gpt2": ("gpt2-small", []),
    "minilm": ("bert-base", ["num_layers=6", "hidden_size=384", "num_heads=12", "intermediate_size=1536"]),
}
"""Benchmark model name -> (plmkit preset, overrides). gpt-small is GPT-2 at 4 layers / 256 hidden;
minilm is the MiniLM-L6 shape (6 layers, 384 hidden, 12 heads, 1536 FFN, BERT's 30,522 vocabulary)."""


def plmkit_config(name: str, **extra) -> ModelConfig:
    preset, overrides = WORKLOAD_PRESETS[name]
    return model_config(preset, overrides + [f"{k}={v}" for k, v in extra.items()])


def hf_config(cfg: ModelConfig, task: str):
    """The `transformers` config of the same shape (through plmkit's own HF translation)."""
    import transformers

    from plmkit.models.hf_compat import config_to_hf

    data = {k: v for k, v in config_to_hf(cfg, task).items() if k not in ("plmkit", "architectures")}
    kind = data.pop("model_type")
    return transformers.AutoConfig.for_model(kind, **data)


def describe(cfg: ModelConfig) -> str:
    return (f"{cfg.family} L={cfg.num_layers} C={cfg.hidden_size} H={cfg.num_heads} "
            f"F={cfg.intermediate_size} V={cfg.vocab_size} dropout={cfg.dropout}")


# --------------------------------------------------------------------------- FLOPs


def forward_flops(cfg: ModelConfig, tokens: int, pairs: int, head_tokens: int, sequences: int = 0) -> float:
    """Matmul FLOPs of the work a forward pass must do (model FLOPs, not hardware FLOPs).

    tokens: real tokens through the layers; pairs: attended (query, key) pairs summed over
    sequences (T^2 bidirectional, T(T+1)/2 causal, per real sequence); head_tokens: positions
    that need the vocabulary projection (masked positions for MLM, every position for a causal
    LM); sequences: rows through the pooler. Padding and a full-vocabulary head over unlabeled
    positions are waste and are not counted.
    """
    c, f = cfg.hidden_size, cfg.intermediate_size
    e = cfg.embedding_size or c
    per_token = 2 * cfg.num_layers * (4 * c * c + 2 * c * f)
    attention = 2 * cfg.num_layers * 2 * c * pairs  # QK^T and AV over all heads
    head = 2 * head_tokens * (cfg.vocab_size * e + (c * e if cfg.arch == "encoder" else 0))
    pooler = 2 * sequences * c * c
    return per_token * tokens + attention + head + pooler


def attended_pairs(lengths: Sequence[int], causal: bool) -> int:
    return int(sum(t * (t + 1) // 2 if causal else t * t for t in lengths))


def mfu(flops_per_second: float, peak_gflops: float) -> float:
    return flops_per_second / (peak_gflops * 1e9)


# --------------------------------------------------------------------------- synthetic batches


def random_lengths(rng: np.random.Generator, n: int, low: int, high: int) -> list[int]:
    """n lengths uniform in [low, high] (both included)."""
    return [int(x) for x in rng.integers(low, high + 1, size=n)]


def pack(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """First-fit-decreasing bin packing: the sequence indices that go into each row."""
    rows: list[list[int]] = []
    free: list[int] = []
    for k in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        for r, space in enumerate(free):
            if lengths[k] <= space:
                rows[r].append(k)
                free[r] -= lengths[k]
                break
        else:
            rows.append([k])
            free.append(row_length - lengths[k])
    return rows


def pad_rows(seqs: Sequence[np.ndarray], length: int, fill: int) -> torch.Tensor:
    """(B, length) tensor of right-padded 1-D int arrays."""
    out = torch.full((len(seqs), length), fill, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.from_numpy(s)
    return out


def pack_rows(seqs: Sequence[np.ndarray], rows: list[list[int]], length: int, fill: int) -> dict[str, torch.Tensor]:
    """Concatenate the sequences of each row; segment_ids number them (-1 = padding, its own
    segment) and position_ids restart at 0 for each sequence. All tensors (R, length)."""
    ids = torch.full((len(rows), length), fill, dtype=torch.long)
    seg = torch.full((len(rows), length), -1, dtype=torch.long)
    pos = torch.zeros((len(rows), length), dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for j, k in enumerate(members):
            n = len(seqs[k])
            ids[r, at : at + n] = torch.from_numpy(seqs[k])
            seg[r, at : at + n] = j
            pos[r, at : at + n] = torch.arange(n)
            at += n
    return {"input_ids": ids, "segment_ids": seg, "position_ids": pos}


# --------------------------------------------------------------------------- output


def choices(parser: argparse.ArgumentParser, flag: str, value: str, valid: Iterable[str]) -> list[str]:
    """Split a comma-separated option value; an unknown item is a usage error naming the valid ones."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    valid = list(valid)
    bad = [v for v in items if v not in valid]
    if bad or not items:
        parser.error(f"{flag}: unknown {', '.join(bad) or 'empty value'}; choose from {', '.join(valid)}")
    return items


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table with right-aligned numeric columns."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def free_memory() -> None:
    gc.collect()
