"""Generation throughput, plmkit vs transformers: same GPT-2 weights, same prompts, interleaved.

GPT-2 small (124M) with random weights, saved once by `transformers` and loaded by plmkit.
Prompts of 16 random tokens, exactly 128 new tokens per row (no stop token), batch 1 and 8;
greedy and top-p 0.9 sampling (with top-k 50, transformers' default, on both sides; `--pure-top-p`
adds top-p without top-k). transformers runs `generate` with fp32 weights (its fastest CPU mode,
see BENCHMARKS.md); plmkit runs `generate` with fp32, bf16, int8 and int4 weights. Every timed call is
one whole generate (prefill + 128 steps); figure = new tokens / second, median over rounds, all
implementations interleaved in one process (order flipped every round). Next to each plmkit
format: GB/s of weights read = the bytes one decode step reads (`decode_step_bytes`: every weight
in its format with its scales, embedding tables excepted) x decode steps per second (new tokens/s
/ batch), so that it can be set against the host's memory bandwidth. `--stream-check` first times
each format's linear kernels alone over the GPT-2 layer shapes (weights streamed from memory,
batch 1) next to a memory copy.

    python benchmarks/bench_generate.py                       # batch 1 and 8, greedy and top-p
    python benchmarks/bench_generate.py --batch 1 --modes greedy --rounds 2
    python benchmarks/bench_generate.py --batch 1 --modes greedy --stream-check   # + per-kernel GB/s
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import plmkit  # noqa: E402
from plmkit.infer.generation import generate  # noqa: E402
from plmkit.infer.quantize import decode_step_bytes, prepare_for_inference  # noqa: E402

PROMPT, NEW = 16, 128
MODES = {"greedy": {}, "top-p": {"top_p": 0.9, "top_k": 50}, "pure-top-p": {"top_p": 0.9, "top_k": 0}}
WEIGHTS = ("fp32", "bf16", "int8", "int4")


def build(weights: list[str], device: torch.device = torch.device("cpu")):
    """The transformers model and one plmkit model per weight format, all from the same random weights."""
    import transformers

    cfg = common.plmkit_config("gpt2")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(common.hf_config(cfg, "causal-lm")).eval().to(device)
    hf.generation_config.eos_token_id = None  # exactly NEW tokens per row
    hf.generation_config.pad_token_id = cfg.pad_token_id
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        base = plmkit.load(folder).eval().to(device)
    ours = {w: prepare_for_inference(copy.deepcopy(base), w) for w in weights}
    return cfg, hf, ours


def hf_step(model, prompts: torch.Tensor, options: dict) -> common.Step:
    device = prompts.device
    sample = bool(options)
    kwargs = dict(do_sample=sample, top_p=options.get("top_p"), top_k=options.get("top_k")) if sample else \
        dict(do_sample=False)

    def step(i: int) -> float:
        with torch.inference_mode():
            out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=NEW,
                                 min_new_tokens=None, **kwargs)
        common.sync(device)
        new = out.size(1) - prompts.size(1)
        assert new == NEW, new
        return prompts.size(0) * new

    return step


def plmkit_step(model, prompts: torch.Tensor, options: dict) -> common.Step:
    def step(i: int) -> float:
        out = generate(model, prompts, max_new_tokens=NEW, stop_token_ids=[], seed=i, **options)
        assert all(len(t) == NEW for t in out.tokens)
        return sum(len(t) for t in out.tokens)

    return step


def same_greedy_tokens(hf, ours, prompts: torch.Tensor) -> bool:
    """Whether plmkit fp32 and transformers produce the same greedy tokens (first 32)."""
    with torch.inference_mode():
        theirs = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=32, do_sample=False)
    mine = generate(ours, prompts, max_new_tokens=32, stop_token_ids=[]).tokens
    return theirs[:, prompts.size(1):].tolist() == mine


def run(hf, ours: dict, batch: int, mode: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(batch)
    prompts = torch.randint(0, 50000, (batch, PROMPT)).to(args.device)
    options = MODES[mode]
    steps = {"transformers fp32": hf_step(hf, prompts, options)}
    steps.update({f"plmkit {w}": plmkit_step(m, prompts, options) for w, m in ours.items()})
    t = common.interleave(steps, args.warmup, args.rounds, 1)
    rates = {name: timing.median_rate for name, timing in t.items()}
    gbs = {w: decode_step_bytes(m) * rates[f"plmkit {w}"] / batch / 1e9 for w, m in ours.items()}
    return {"batch": batch, "mode": mode, "rates": rates, "gb_per_s": gbs,
            "spread": {name: common.ratio_spread(t["transformers fp32"], timing) for name, timing in t.items()}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--modes", default="greedy,top-p", help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--pure-top-p", action="store_true", help="also top-p 0.9 without top-k")
    p.add_argument("--weights", default=",".join(WEIGHTS), help="plmkit weight formats (default fp32,bf16,int8,int4)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--stream-check", action="store_true",
                   help="also time each format's linear kernels alone at batch 1 (weights streamed from memory)")
    p.add_argument("--threads", type=int, default=common.THREADS)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu; on cuda --weights fp32,bf16)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    args.batch = [int(b) for b in args.batch.split(",")]
    args.modes = common.choices(p, "--modes", args.modes, MODES) + (["pure-top-p"] if args.pure_top_p else [])
    args.weights = common.choices(p, "--weights", args.weights, WEIGHTS)
    args.device = torch.device(args.device)
    if args.device.type != "cpu" and set(args.weights) - {"fp32", "bf16"}:
        p.error("--weights: int8 and int4 run on CPU only; use --weights fp32,bf16 on a GPU")
    if args.rounds < 2:
        p.error("at least 2 interleaved rounds are needed")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    common.setup(args.threads)
    print(f"# generation, GPT-2 small. {common.environment()}", flush=True)
    if args.stream_check:
        print(stream_check(args.weights))
    cfg, hf, ours = build(args.weights, args.device)
    sizes = {w: decode_step_bytes(m) / 1e6 for w, m in ours.items()}
    print("weights read per decode step: " + ", ".join(f"{w} {mb:,.0f} MB" for w, mb in sizes.items()), flush=True)
    check = torch.randint(0, 50000, (2, PROMPT)).to(args.device)
    print(f"greedy tokens identical (plmkit fp32 vs transformers, 2x32): {same_greedy_tokens(hf, ours['fp32'], check)}"
          if "fp32" in ours else "", flush=True)
    results = []
    for batch in args.batch:
        for mode in args.modes:
            r = run(hf, ours, batch, mode, args)
            results.append(r)
            print(f"  batch {batch} {mode}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["rates"].items()), flush=True)
    print()
    print(table(results, args.weights))
    print(f"\n{common.describe(cfg)}; prompt {PROMPT} random tokens -> {NEW} new tokens per row, no stop token. "
          f"Figures: new tokens/s, median of {args.rounds} interleaved rounds after {args.warmup} warm-up, one "
          f"whole generate call per round and implementation. top-p = top_p 0.9 + top_k 50 on both sides "
          f"(transformers' default top_k); pure-top-p = top_k 0. transformers: GPT2LMHeadModel.generate, fp32, "
          f"attn={hf.config._attn_implementation}. plmkit: plmkit.infer.generation.generate with weights converted "
          f"by prepare_for_inference (fp32: transposed weights; bf16: oneDNN-packed; int8: weight-only, "
          f"per-channel scales; int4: weight-only, groups of 32, LM head int8).")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def table(results: list[dict], weights: list[str]) -> str:
    header = (["batch", "decoding", "HF fp32"] + [f"plmkit {w}" for w in weights] + [f"GB/s {w}" for w in weights]
              + ["fp32/fp32", "best/HF", "best"])
    rows = []
    for r in results:
        hf = r["rates"]["transformers fp32"]
        ours = {w: r["rates"][f"plmkit {w}"] for w in weights}
        best = max(ours, key=ours.get)
        lo, hi = r["spread"][f"plmkit {best}"]
        same = f"x{ours['fp32'] / hf:.2f}" if "fp32" in ours else "-"
        rows.append([r["batch"], r["mode"], hf] + [ours[w] for w in weights] +
                    [f"{r['gb_per_s'][w]:.1f}" for w in weights] +
                    [same, f"x{ours[best] / hf:.2f} ({lo:.2f}-{hi:.2f})", best])
    return common.format_table(header, rows)


def stream_check(weights: list[str], repeats: int = 8) -> str:
    """A table: each format's linear layers alone, batch 1, over GPT-2 124M's 48 layer shapes plus its
    LM head (far more bytes than the caches hold), median ms per pass and GB/s of weights, next to
    the bandwidth of a 256 MB copy (bytes read + written)."""
    from torch import nn

    big = torch.empty(256 * 2**20, dtype=torch.uint8)
    copy = torch.empty_like(big)
    rows = [["memory copy (read + write)", "-", f"{2 * big.numel() / _median(lambda: copy.copy_(big), 4) / 1e9:.1f}"]]
    del big, copy
    shapes = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12 + [(50257, 768)]
    for w in weights:
        torch.manual_seed(0)
        model = nn.Module()
        model.blocks = nn.ModuleList(nn.Linear(k, n) for n, k in shapes[:-1])
        model.lm_head = nn.Linear(shapes[-1][1], shapes[-1][0])  # quantize.py keeps the LM head int8 under int4
        prepare_for_inference(model, w)
        dtype = torch.float32 if w == "fp32" else torch.bfloat16
        xs = {k: torch.randn(1, k, dtype=dtype) for k in (768, 3072)}
        layers = [*model.blocks, model.lm_head]

        def one_pass() -> None:
            with torch.inference_mode():
                for layer, (n, k) in zip(layers, shapes):
                    layer(xs[k])

        seconds = _median(one_pass, repeats)
        rows.append([f"plmkit {w} linears", f"{seconds * 1000:.2f}", f"{decode_step_bytes(model) / seconds / 1e9:.1f}"])
    rows += alternative_kernels(shapes[:-1], repeats)
    return common.format_table(["kernel (batch 1)", "ms per pass", "GB/s"], rows) + "\n"


def alternative_kernels(shapes: list[tuple[int, int]], repeats: int) -> list[list[str]]:
    """The same block linears (no LM head) through the other kernels torch offers at batch 1: plain
    F.linear on the (out, in) weight, torch.mv, and dynamically quantized int8 (activations
    quantized too, so not the same function as plmkit's weight-only int8) on each engine."""
    from torch import nn

    torch.manual_seed(0)
    weights = [torch.randn(n, k) * 0.02 for n, k in shapes]
    x32 = {k: torch.randn(1, k) for k in sorted({k for _, k in shapes})}
    x16 = {k: v.bfloat16() for k, v in x32.items()}
    rows = []

    def add(name: str, fn, nbytes: int) -> None:
        with torch.inference_mode():
            seconds = _median(fn, repeats)
        rows.append([name, f"{seconds * 1000:.2f}", f"{nbytes / seconds / 1e9:.1f}"])

    size = sum(w.numel() for w in weights)
    add("fp32 F.linear (out, in) weight", lambda: [F.linear(x32[w.size(1)], w) for w in weights], 4 * size)
    bf16 = [w.bfloat16() for w in weights]
    add("bf16 F.linear (out, in) weight", lambda: [F.linear(x16[w.size(1)], w) for w in bf16], 2 * size)
    add("bf16 torch.mv", lambda: [torch.mv(w, x16[w.size(1)][0]) for w in bf16], 2 * size)
    engine = torch.backends.quantized.engine
    for name in torch.backends.quantized.supported_engines:
        if name == "none":
            continue
        torch.backends.quantized.engine = name
        layers = []
        for w in weights:
            linear = nn.Linear(w.size(1), w.size(0), bias=False)
            linear.weight.data = w
            with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated in favour of torchao
                warnings.simplefilter("ignore")
                layers.append(torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, torch.qint8))
        add(f"int8 dynamic quantization ({name})", lambda: [q(x32[w.size(1)]) for q, w in zip(layers, weights)], size)
    torch.backends.quantized.engine = engine
    return rows


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


if __name__ == "__main__":
    main()
