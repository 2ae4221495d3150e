"""Classification inference throughput, plmkit vs transformers: same shapes, same data, interleaved.

BertForSequenceClassification-shaped models (2 labels), batches of 32 rows, under
torch.inference_mode, with fp32 or bf16 weights (model.to(torch.bfloat16), no autocast).
  full:      32 x 128 rows of real tokens; figure = median over >= 5 batches per side.
  real-len:  a pool of 32 x P sequences with lengths uniform in [16, 128]. transformers runs
             them in arrival order, each batch padded to its longest row; plmkit sorts the pool
             by length first (what plmkit.pipeline does) and pads each batch to its longest.
             Batches differ in cost by design, so figure = all sequences / all time over whole
             passes of the pool, batch k of each side interleaved.

    python benchmarks/bench_infer.py                    # bert-base, fp32 + bf16, full + real-len
    python benchmarks/bench_infer.py --models bert-mini --quick
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from plmkit.models import build_model  # noqa: E402

BATCH, LENGTH, MIN_LENGTH = 32, 128, 16
MODELS = ("bert-mini", "bert-base")
CLS, SEP = 101, 102


def sequences(rng: np.random.Generator, lengths: list[int], vocab: int) -> list[np.ndarray]:
    out = []
    for n in lengths:
        ids = rng.integers(1000, vocab, size=n)
        ids[0], ids[-1] = CLS, SEP
        out.append(ids)
    return out


def batches_for(seqs: list[np.ndarray], order: list[int], pad: int) -> list[dict[str, torch.Tensor]]:
    """Batches of BATCH sequences taken in `order`, each padded to its longest row."""
    out = []
    for start in range(0, len(order), BATCH):
        chunk = [seqs[k] for k in order[start : start + BATCH]]
        width = max(len(s) for s in chunk)
        ones = [np.ones(len(s), dtype=np.int64) for s in chunk]
        out.append({"input_ids": common.pad_rows(chunk, width, pad),
                    "attention_mask": common.pad_rows(ones, width, 0),
                    "token_type_ids": torch.zeros(len(chunk), width, dtype=torch.long)})
    return out


def make_data(vocab: int, pad: int, real_length: bool, n_batches: int, seed: int = 0) -> dict[str, list[dict]]:
    """Per side, the list of batches (same sequences on both sides)."""
    rng = np.random.default_rng(seed)
    n = BATCH * n_batches
    lengths = common.random_lengths(rng, n, MIN_LENGTH, LENGTH) if real_length else [LENGTH] * n
    seqs = sequences(rng, lengths, vocab)
    arrival = list(range(n))
    by_length = sorted(arrival, key=lambda k: lengths[k]) if real_length else arrival
    return {"transformers": batches_for(seqs, arrival, pad), "plmkit": batches_for(seqs, by_length, pad)}


def build_pair(name: str, precision: str, device: torch.device = torch.device("cpu")) -> tuple:
    import transformers

    cfg = common.plmkit_config(name)
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(common.hf_config(cfg, "sequence-classification"))
    torch.manual_seed(0)
    ours = build_model(cfg, "sequence-classification")
    dtype = common.DTYPES[precision]
    return cfg, {"transformers": hf.to(device, dtype).eval(), "plmkit": ours.to(device, dtype).eval()}


def infer_step(model: torch.nn.Module, batches: list[dict], device: torch.device) -> common.Step:
    def step(i: int) -> float:
        b = batches[i % len(batches)]
        with torch.inference_mode():
            model(**b).logits.float()
        common.sync(device)
        return b["input_ids"].size(0)

    return step


def run(cfg, models: dict, name: str, precision: str, real_length: bool, args: argparse.Namespace) -> dict:
    n_batches = args.pool if real_length else 3
    data = make_data(cfg.vocab_size, cfg.pad_token_id, real_length, n_batches)
    data = {side: [{k: v.to(args.device) for k, v in b.items()} for b in batches] for side, batches in data.items()}
    steps = {side: infer_step(models[side], data[side], args.device) for side in models}
    if real_length:  # whole passes over the pool, batch k of both sides back to back
        t = common.interleave(steps, args.warmup, args.pool * args.passes, 1)
        hf, ours = t["transformers"].total_rate, t["plmkit"].total_rate
        cpu_ratio = t["plmkit"].total_cpu_rate / t["transformers"].total_cpu_rate
    else:
        t = common.interleave(steps, args.warmup, args.rounds, args.per_round)
        hf, ours = t["transformers"].median_rate, t["plmkit"].median_rate
        cpu_ratio = t["plmkit"].median_cpu_rate / t["transformers"].median_cpu_rate
    fills = {side: sum(int(b["attention_mask"].sum()) for b in data[side])
             / sum(b["input_ids"].numel() for b in data[side]) for side in data}
    return {"workload": f"{name} {BATCH}x{LENGTH}" + (" real-len" if real_length else ""), "precision": precision,
            "hf": hf, "ours": ours, "ratio": ours / hf, "cpu_ratio": cpu_ratio, "fill_hf": fills["transformers"],
            "fill_ours": fills["plmkit"], "steps": len(t["plmkit"].seconds),
            "attn": models["transformers"].config._attn_implementation, "config": common.describe(cfg)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="bert-base", help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--precision", default="fp32,bf16", help="weight dtype: fp32, bf16 or both (default)")
    p.add_argument("--shapes", default="full,real", help="full rows and/or real-length rows (default both)")
    p.add_argument("--quick", action="store_true", help="fewest steps: 1 warm-up, 5 rounds of 1 timed batch")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per-round", type=int, default=2)
    p.add_argument("--pool", type=int, default=4, help="real-len: batches of 32 in the sorted pool")
    p.add_argument("--passes", type=int, default=2, help="real-len: timed passes over the pool")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=common.THREADS, help="torch CPU threads (default 2)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    if args.quick:
        args.warmup, args.rounds, args.per_round, args.passes = 1, 5, 1, 2
    args.models = common.choices(p, "--models", args.models, MODELS)
    args.precision = common.choices(p, "--precision", args.precision, common.DTYPES)
    args.shapes = common.choices(p, "--shapes", args.shapes, ("full", "real"))
    if args.rounds * args.per_round < 5 or args.pool * args.passes < 5:
        p.error("at least 5 timed batches per side are needed")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    common.setup(args.threads)
    print(f"# inference, sequence classification. {common.environment()}, device {args.device}", flush=True)
    results = []
    for name in args.models:
        for precision in args.precision:
            cfg, models = build_pair(name, precision, args.device)
            for shape in args.shapes:
                r = run(cfg, models, name, precision, shape == "real", args)
                results.append(r)
                print(f"  {r['workload']} {precision}: transformers {r['hf']:.1f} seq/s, plmkit {r['ours']:.1f} "
                      f"seq/s, x{r['ratio']:.2f}", flush=True)
            del models
            common.free_memory()
    header = ["workload", "weights", "HF seq/s", "plmkit seq/s", "ratio", "CPU-time ratio", "fill HF", "fill plmkit"]
    rows = [[r["workload"], r["precision"], r["hf"], r["ours"], f"x{r['ratio']:.2f}", f"x{r['cpu_ratio']:.2f}",
             f"{r['fill_hf']:.2f}", f"{r['fill_ours']:.2f}"] for r in results]
    print()
    print(common.format_table(header, rows))
    print(f"\nfull: median of {args.rounds * args.per_round} timed batches per side after {args.warmup} warm-up, "
          f"{args.rounds} interleaved rounds. real-len: pool of {args.pool} x {BATCH} sequences, lengths uniform "
          f"in [{MIN_LENGTH},{LENGTH}], {args.passes} timed passes, sequences / total time; fill = real / padded "
          f"tokens. ratio = plmkit / transformers; CPU-time ratio = the same from process CPU time.")
    for name in args.models:
        r = next(x for x in results if x["workload"].startswith(name))
        print(f"{name}: {r['config']}; transformers BertForSequenceClassification attn={r['attn']}; "
              f"plmkit build_model(cfg, 'sequence-classification'); torch.inference_mode")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
