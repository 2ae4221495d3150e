"""Where the time of one plmkit training step goes: torch.profiler per-op CPU time, grouped.

One step = build the micro-batch from token arrays (data) + forward under bf16 autocast + backward
+ AdamW update, on random data of the benchmark shapes (bench_train.py's full rows). Every op's
self CPU time is put in one category: an op inside a dropout, attention, loss or optimizer call
counts for that call; the rest by the op's name. "python + autograd" is the step's wall time
not spent inside any op (interpreter, autograd engine, profiler overhead).

    python benchmarks/profile_step.py                          # bert-base 8x128, bert-mini 32x128, gpt2 4x256
    python benchmarks/profile_step.py --models bert-mini --precision fp32 --top 15
    python benchmarks/profile_step.py --no-fast-dropout                   # torch's own dropout
    python benchmarks/profile_step.py --loss-chunk 1024 --malloc retain   # with the other speed options

Prints a Markdown table (category x model: ms and share of the step) ready for benchmarks/README.md,
then the configuration. Timings depend on the host; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402
import common  # noqa: E402

from plmkit.models import build_model  # noqa: E402
from plmkit.models.base import use_chunked_loss  # noqa: E402
from plmkit.models.layers import use_fast_dropout  # noqa: E402
from plmkit.train.allocator import apply_malloc_setting  # noqa: E402
from plmkit.train.loop import TrainConfig, loss_chunk_for  # noqa: E402
from plmkit.train.optim import build_optimizer  # noqa: E402

SHAPES = {"bert-base": (8, 128), "bert-mini": (32, 128), "gpt2": (4, 256), "gpt-small": (16, 256)}
CATEGORIES = ("matmul", "attention", "norms+GELU", "dropout", "loss (softmax+CE)", "casts+copies", "optimizer",
              "allocator", "embeddings", "other elementwise", "data", "python + autograd")

_ENCLOSING = {  # an op inside one of these calls counts for the call
    "optimizer": ("Optimizer.step", "Optimizer.zero_grad", "plmkit.optimizer"),
    "data": ("plmkit.data",),
    "dropout": ("aten::dropout", "aten::native_dropout", "aten::feature_dropout", "aten::bernoulli",
                "aten::native_dropout_backward"),
    "attention": ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product", "aten::_safe_softmax"),
    "loss (softmax+CE)": ("aten::cross_entropy_loss", "aten::nll_loss", "aten::_log_softmax", "aten::log_softmax",
                          "aten::logsumexp", "LinearCrossEntropy"),
    "norms+GELU": ("aten::layer_norm", "aten::native_layer_norm", "aten::gelu"),
}
_BY_NAME = {  # the op's own name otherwise
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
               "aten::addbmm", "mkldnn::", "aten::_weight_int", "aten::_convolution"),
    "norms+GELU": ("aten::native_layer_norm_backward", "aten::gelu_backward", "aten::tanh", "aten::tanh_backward"),
    "loss (softmax+CE)": ("aten::_log_softmax_backward_data", "aten::nll_loss_backward", "aten::_softmax",
                          "aten::_softmax_backward_data"),
    "casts+copies": ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous"),
    "allocator": ("aten::empty", "aten::empty_strided", "aten::empty_like", "aten::resize_", "aten::new_empty"),
    "embeddings": ("aten::embedding", "aten::embedding_dense_backward", "aten::index_select", "aten::embedding_backward"),
}


def category(event) -> str:
    """The category of one profiler event (see the module docstring)."""
    node = event
    while node is not None:
        for name, prefixes in _ENCLOSING.items():
            if node.name.startswith(prefixes):
                return name
        node = node.cpu_parent
    for name, prefixes in _BY_NAME.items():
        if event.name.startswith(prefixes):
            return name
    return "other elementwise"


def make_step(model_name: str, args: argparse.Namespace):
    """The model, its optimizer and a step function that profiles as one step."""
    cfg = common.plmkit_config(model_name)
    task = "pretraining" if cfg.arch == "encoder" else "causal-lm"
    torch.manual_seed(0)
    model = build_model(cfg, task).train()
    use_fast_dropout(model, args.fast_dropout)
    use_chunked_loss(model, args.loss_chunk)
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.01)
    b, t = SHAPES[model_name]
    rng = np.random.default_rng(0)
    make = bench_train.encoder_sequence if cfg.arch == "encoder" else bench_train.decoder_sequence
    seqs = [make(rng, t, cfg.vocab_size) for _ in range(b)]

    def collate() -> dict[str, torch.Tensor]:
        batch = {"input_ids": common.pad_rows([s["ids"] for s in seqs], t, cfg.pad_token_id),
                 "labels": common.pad_rows([s["labels"] for s in seqs], t, -100)}
        if cfg.arch == "encoder":
            batch["token_type_ids"] = common.pad_rows([s["types"] for s in seqs], t, 0)
            batch["next_sentence_label"] = torch.zeros(b, dtype=torch.long)
        return batch

    def step() -> None:
        with record_function("plmkit.data"):
            batch = collate()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
        with ctx:
            loss = model(**batch).loss
        loss.backward()
        with record_function("plmkit.optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return cfg, step


def profile_model(model_name: str, args: argparse.Namespace) -> tuple[dict[str, float], float, list[tuple[str, float]]]:
    """(ms per category, step wall ms, top ops by self time) over args.steps profiled steps."""
    cfg, step = make_step(model_name, args)
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        wall = (time.perf_counter() - start) * 1000 / args.steps
    totals: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    for event in prof.events():
        ms = event.self_cpu_time_total / 1000 / args.steps
        totals[category(event)] += ms
        by_op[event.name] += ms
    inside_ops = sum(totals.values())
    totals["python + autograd"] = max(0.0, wall - inside_ops)
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[: args.top]
    return dict(totals), wall, top


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="bert-base,bert-mini,gpt2", help=f"comma-separated, from {', '.join(SHAPES)}")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--threads", type=int, default=common.THREADS)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="profiled steps (averaged)")
    p.add_argument("--top", type=int, default=0, help="also list this many ops by self time per model")
    p.add_argument("--fast-dropout", action=argparse.BooleanOptionalAction, default=TrainConfig().fast_dropout,
                   help="TrainConfig.fast_dropout (default: its default)")
    p.add_argument("--loss-chunk", type=int, default=loss_chunk_for(TrainConfig().loss_chunk, torch.device("cpu")),
                   help="TrainConfig.loss_chunk (label positions per chunk, 0 = full logits; default: its CPU default)")
    p.add_argument("--malloc", default="default", choices=("default", "retain"), help="TrainConfig.malloc")
    args = p.parse_args(argv)
    args.models = common.choices(p, "--models", args.models, SHAPES)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    allocator = apply_malloc_setting(args.malloc)
    results = {}
    for name in args.models:
        results[name] = profile_model(name, args)
        b, t = SHAPES[name]
        print(f"  {name} {b}x{t}: {results[name][1]:,.0f} ms per step", flush=True)
    print()
    print(table(results))
    for name, (_, _, top) in results.items():
        if top:
            print(f"\n{name}: top ops by self CPU time (ms per step)")
            print(common.format_table(["op", "ms"], [[op, ms] for op, ms in top]))
    print(f"\nprofile of one training step (data + forward + backward + AdamW), {args.precision}"
          f"{' autocast' if args.precision == 'bf16' else ''}, mean of {args.steps} profiled steps after "
          f"{args.warmup} warm-up; {args.threads} threads; fast_dropout={args.fast_dropout}, "
          f"loss_chunk={args.loss_chunk}; {allocator}; torch {torch.__version__}; "
          f"load avg {__import__('os').getloadavg()[0]:.1f}")
    print("categories: an op inside dropout / attention / loss / optimizer / data counts for that call, the rest by "
          "the op's name; python + autograd = step wall time outside every op")
    return results


def table(results: dict) -> str:
    header = ["category"] + [f"{name} {SHAPES[name][0]}x{SHAPES[name][1]}" for name in results]
    rows = []
    for cat in CATEGORIES:
        row: list[object] = [cat]
        for totals, wall, _ in results.values():
            ms = totals.get(cat, 0.0)
            row.append(f"{ms:,.1f} ms ({100 * ms / wall:.0f}%)")
        rows.append(row)
    rows.append(["step (wall)"] + [f"{wall:,.1f} ms" for _, wall, _ in results.values()])
    return common.format_table(header, rows)


if __name__ == "__main__":
    main()
