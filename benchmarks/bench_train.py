"""Training-step throughput, plmkit vs transformers: same shapes, same data, same process, interleaved.

One step = forward + backward + AdamW update (no clipping, no accumulation) on synthetic data.
  transformers: BertForPreTraining / GPT2LMHeadModel, torch.optim.AdamW with its defaults
                (the for-loop path on CPU), padded batches, full-vocabulary MLM head.
  plmkit:       build_model(cfg, "pretraining" | "causal-lm"), plmkit.train.optim.build_optimizer
                (fused AdamW), MLM head only at masked positions, and for real-length data
                packed rows (segment_ids + per-sequence position_ids, block-diagonal attention).

    python benchmarks/bench_train.py                     # bert-mini + gpt-small, fp32 + bf16
    python benchmarks/bench_train.py --models bert-base,gpt2 --precision bf16
    python benchmarks/bench_train.py --quick             # fewest steps allowed (5 timed per side)
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from plmkit.config import ModelConfig  # noqa: E402
from plmkit.models import build_model  # noqa: E402
from plmkit.train.optim import build_optimizer  # noqa: E402

SHAPES = {"bert-mini": (32, 128), "bert-base": (8, 128), "gpt-small": (16, 256), "gpt2": (4, 256)}
"""Model -> (batch, length) of the full-row workload."""
REAL_MIN_LENGTH = 16
MASK_PROB = 0.15
CLS, SEP, MASK = 101, 102, 103
LR = 1e-4


@dataclass
class Batch:
    """One step's inputs for each side, and the work it represents."""

    hf: dict[str, torch.Tensor]
    ours: dict[str, torch.Tensor]
    tokens: int
    flops: float  # model FLOPs of forward + backward (3 x forward)
    rows_ours: int


@dataclass
class Workload:
    model: str
    real_length: bool
    batches: list[Batch] = field(default_factory=list)

    @property
    def name(self) -> str:
        b, t = SHAPES[self.model]
        return f"{self.model} {b}x{t}" + (" real-len" if self.real_length else "")


# --------------------------------------------------------------------------- data


def encoder_sequence(rng: np.random.Generator, length: int, vocab: int) -> dict[str, np.ndarray]:
    """[CLS] a [SEP] b [SEP] with 15% of the inner positions masked: ids, types, labels (length,)."""
    ids = rng.integers(1000, vocab, size=length)
    mid = max(1, length // 2)
    ids[0], ids[mid], ids[-1] = CLS, SEP, SEP
    types = (np.arange(length) > mid).astype(np.int64)
    labels = np.full(length, -100)
    inner = np.setdiff1d(np.arange(1, length - 1), [mid])
    picked = rng.choice(inner, size=max(1, round(MASK_PROB * length)), replace=False)
    labels[picked] = ids[picked]
    ids[picked] = MASK
    return {"ids": ids, "types": types, "labels": labels}


def decoder_sequence(rng: np.random.Generator, length: int, vocab: int) -> dict[str, np.ndarray]:
    ids = rng.integers(0, vocab, size=length)
    return {"ids": ids, "labels": ids.copy()}


def make_batch(cfg: ModelConfig, lengths: list[int], width: int, pack: bool, rng: np.random.Generator) -> Batch:
    """Padded HF tensors and plmkit tensors (packed when `pack`) for sequences of `lengths`."""
    encoder = cfg.arch == "encoder"
    seqs = [(encoder_sequence if encoder else decoder_sequence)(rng, n, cfg.vocab_size) for n in lengths]
    pad = cfg.pad_token_id
    longest = max(lengths)
    hf = {"input_ids": common.pad_rows([s["ids"] for s in seqs], longest, pad),
          "labels": common.pad_rows([s["labels"] for s in seqs], longest, -100)}
    hf["attention_mask"] = (common.pad_rows([np.ones(n, dtype=np.int64) for n in lengths], longest, 0))
    if encoder:
        hf["token_type_ids"] = common.pad_rows([s["types"] for s in seqs], longest, 0)
        hf["next_sentence_label"] = torch.from_numpy(rng.integers(0, 2, size=len(seqs)))
    ours = dict(hf)
    if pack:
        rows = common.pack(lengths, width)
        ours = common.pack_rows([s["ids"] for s in seqs], rows, width, pad)
        labels = [s["labels"].copy() for s in seqs]
        if not encoder:
            for lab in labels:
                lab[0] = -100  # a packed row must not predict a sequence's first token from the previous one
        ours["labels"] = common.pack_rows(labels, rows, width, -100)["input_ids"]
        if encoder:
            ours["token_type_ids"] = common.pack_rows([s["types"] for s in seqs], rows, width, 0)["input_ids"]
            ours["next_sentence_label"] = torch.from_numpy(rng.integers(0, 2, size=len(rows)))
    tokens = sum(lengths)
    heads = sum(int((s["labels"] != -100).sum()) for s in seqs) if encoder else tokens
    flops = 3 * common.forward_flops(cfg, tokens, common.attended_pairs(lengths, not encoder), heads,
                                     len(seqs) if encoder else 0)
    return Batch(hf, ours, tokens, flops, ours["input_ids"].size(0))


def make_workload(cfg: ModelConfig, model: str, real_length: bool, n_batches: int = 3, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    b, t = SHAPES[model]
    w = Workload(model, real_length)
    for _ in range(n_batches):
        lengths = common.random_lengths(rng, b, REAL_MIN_LENGTH, t) if real_length else [t] * b
        w.batches.append(make_batch(cfg, lengths, t, real_length, rng))
    return w


# --------------------------------------------------------------------------- models and steps


def build_pair(name: str) -> tuple[ModelConfig, dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]]:
    """The transformers and plmkit models of one shape, each with its optimizer."""
    import transformers

    cfg = common.plmkit_config(name)
    task = "pretraining" if cfg.arch == "encoder" else "causal-lm"
    hf_cls = transformers.BertForPreTraining if cfg.arch == "encoder" else transformers.GPT2LMHeadModel
    torch.manual_seed(0)
    hf = hf_cls(common.hf_config(cfg, task)).train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=LR, weight_decay=0.01)
    torch.manual_seed(0)
    ours = build_model(cfg, task).train()
    ours_opt = build_optimizer(ours, lr=LR, weight_decay=0.01)
    return cfg, {"transformers": (hf, hf_opt), "plmkit": (ours, ours_opt)}


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[dict], precision: str,
               tokens: list[int]) -> common.Step:
    def step(i: int) -> float:
        k = i % len(batches)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
        with ctx:
            loss = model(**batches[k]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return tokens[k]

    return step


def run_workload(pair: dict, w: Workload, precision: str, args: argparse.Namespace) -> dict:
    tokens = [b.tokens for b in w.batches]
    steps = {
        "transformers": train_step(*pair["transformers"], [b.hf for b in w.batches], precision, tokens),
        "plmkit": train_step(*pair["plmkit"], [b.ours for b in w.batches], precision, tokens),
    }
    t = common.interleave(steps, args.warmup, args.rounds, args.per_round)
    flops_per_token = sum(b.flops for b in w.batches) / sum(tokens)
    hf, ours = t["transformers"].median_rate, t["plmkit"].median_rate
    lo, hi = common.ratio_spread(t["transformers"], t["plmkit"])
    cpu_ratio = t["plmkit"].median_cpu_rate / t["transformers"].median_cpu_rate
    return {"workload": w.name, "precision": precision, "hf": hf, "ours": ours, "ratio": ours / hf,
            "ratio_min": lo, "ratio_max": hi, "cpu_ratio": cpu_ratio, "flops_per_token": flops_per_token,
            "steps": len(t["plmkit"].seconds)}


def config_lines(cfg: ModelConfig, w: Workload, pair: dict) -> list[str]:
    hf_model, hf_opt = pair["transformers"]
    ours_opt = pair["plmkit"][1]
    b, t = SHAPES[w.model]
    fill = sum(x.tokens for x in w.batches) / sum(x.hf["input_ids"].numel() for x in w.batches)
    lines = [f"{w.name}: {common.describe(cfg)}; batch {b}, length {t}"
             + (f", lengths uniform in [{REAL_MIN_LENGTH},{t}]" if w.real_length else ""),
             f"  transformers: {type(hf_model).__name__}, attn={hf_model.config._attn_implementation}, "
             f"torch.optim.AdamW(lr={LR}, weight_decay=0.01, foreach={hf_opt.defaults['foreach']}, "
             f"fused={hf_opt.defaults['fused']}), padded to the longest row (fill {fill:.2f})",
             f"  plmkit: build_optimizer(fused={ours_opt.defaults['fused']})"]
    if w.real_length:
        rows = sum(x.rows_ours for x in w.batches) / len(w.batches)
        packed_fill = sum(x.tokens for x in w.batches) / sum(x.ours["input_ids"].numel() for x in w.batches)
        lines[-1] += f", packed into {rows:.1f} rows of {t} on average (fill {packed_fill:.2f})"
    if cfg.arch == "encoder":
        lines[-1] += "; MLM head at masked positions only (15%)"
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="bert-mini,gpt-small",
                   help=f"comma-separated, from {', '.join(SHAPES)} (default: bert-mini,gpt-small)")
    p.add_argument("--precision", default="fp32,bf16", help="fp32, bf16 (autocast) or both (default)")
    p.add_argument("--shapes", default="full,real",
                   help="full rows and/or real-length rows (lengths uniform in [16, T]); default both")
    p.add_argument("--quick", action="store_true", help="fewest steps: 1 warm-up, 5 rounds of 1 timed step")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per-round", type=int, default=2, help="timed steps per side per round")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.rounds, args.per_round = 1, 5, 1
    args.models = common.choices(p, "--models", args.models, SHAPES)
    args.precision = common.choices(p, "--precision", args.precision, common.DTYPES)
    args.shapes = common.choices(p, "--shapes", args.shapes, ("full", "real"))
    if args.rounds * args.per_round < 5:
        p.error("at least 5 timed steps per side are needed (--rounds x --per-round >= 5)")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    common.setup()
    print(f"# train step: forward + backward + AdamW. {common.environment()}", flush=True)
    peaks = common.PeakMeter()
    peaks.measure(args.precision)
    results, configs = [], []
    for model in args.models:
        cfg, pair = build_pair(model)
        for shape in args.shapes:
            w = make_workload(cfg, model, shape == "real")
            configs += config_lines(cfg, w, pair)
            for precision in args.precision:
                r = run_workload(pair, w, precision, args)
                results.append(r)
                print(f"  {r['workload']} {precision}: transformers {r['hf']:,.0f} tok/s, plmkit "
                      f"{r['ours']:,.0f} tok/s, x{r['ratio']:.2f}", flush=True)
        del pair
        common.free_memory()
    peaks.measure(args.precision)
    for r in results:
        r["peak_gflops"] = peaks.peak(r["precision"])
        r["mfu_hf"] = common.mfu(r["hf"] * r["flops_per_token"], r["peak_gflops"])
        r["mfu_ours"] = common.mfu(r["ours"] * r["flops_per_token"], r["peak_gflops"])
    print_report(results, configs, peaks, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def print_report(results: list[dict], configs: list[str], peaks: common.PeakMeter, args) -> None:
    header = ["workload", "precision", "HF tok/s", "plmkit tok/s", "ratio", "ratio range", "CPU-time ratio",
              "MFU HF", "MFU plmkit"]
    rows = [[r["workload"], r["precision"], r["hf"], r["ours"], f"x{r['ratio']:.2f}",
             f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}", f"x{r['cpu_ratio']:.2f}", f"{r['mfu_hf']:.3f}",
             f"{r['mfu_ours']:.3f}"]
            for r in results]
    print()
    print(common.format_table(header, rows))
    print(f"\nmedian of {args.rounds * args.per_round} timed steps per side after {args.warmup} warm-up, "
          f"{args.rounds} interleaved rounds; ratio = plmkit / transformers; ratio range = min-max over rounds; "
          "CPU-time ratio = the same ratio from process CPU time per step (less sensitive to other jobs)")
    print(f"matmul peak (torch.mm 2048^2, 4096^2, start + end of run): {peaks.summary()}")
    print("MFU = model FLOPs (real tokens, masked-position MLM head, no padding) / time / peak")
    print("\n".join(configs))


if __name__ == "__main__":
    main()
