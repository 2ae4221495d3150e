"""Training-step throughput, plmkit vs transformers: same shapes, same data, same process, interleaved.

One step = forward + backward + AdamW update (no clipping, no accumulation).
  transformers: BertForPreTraining / GPT2LMHeadModel / BertForSequenceClassification,
                torch.optim.AdamW with its defaults, padded batches, full-vocabulary MLM head.
  plmkit:       build_model(cfg, task), plmkit.train.optim.build_optimizer (fused AdamW), MLM head
                only at masked positions, packed rows for real-length pretraining data, and
                length-bucketed batches (the recipes' FeatureBatches) for fine-tuning.

Workloads: pretraining steps on synthetic data (bert-mini 32x128, bert-base 8x128, gpt-small
16x256, gpt2 4x256; full rows and/or real lengths), and `minilm-sst2`: a MiniLM-L6-shaped
classifier (6L/384/12 heads/1536 FFN, 30,522 vocabulary) fine-tuned on real SST-2 sentences
(../shared/data/sst2, skipped with the reason when absent), batch 32; one timed unit is a pass
of 32 optimizer steps over 1,024 sentences (transformers: arrival order, each batch padded to
its longest; plmkit: FeatureBatches' default length bucketing of the same sentences).

plmkit variants (--variants, several sides interleaved with transformers; "+" combines):
  default         what TrainConfig's defaults give (compile "auto" is eager on CPU)
  compile         regional torch.compile of every block, torch's dynamic-shape policy
  compile-static  the same with static shapes (lengths padded to multiples of 32)
  fast-dropout    TrainConfig.fast_dropout (on by default)   torch-dropout   torch's own dropout instead
  loss-chunk      TrainConfig.loss_chunk = --loss-chunk  full-logits     loss_chunk 0 (the default on GPU)
  checkpointing   TrainConfig.activation_checkpointing

    python benchmarks/bench_train.py                     # bert-mini + gpt-small, fp32 + bf16
    python benchmarks/bench_train.py --models bert-base,gpt2 --precision bf16
    python benchmarks/bench_train.py --models bert-mini,gpt-small --precision bf16 \\
        --variants default,torch-dropout,full-logits,compile
    python benchmarks/bench_train.py --models gpt2 --precision bf16 --variants default,checkpointing --memory
    python benchmarks/bench_train.py --models minilm-sst2 --precision fp32,bf16
    python benchmarks/bench_train.py --malloc retain     # or --tcmalloc: the allocator (whole process)
    python benchmarks/bench_train.py --quick             # fewest steps allowed (5 timed per side)
    python benchmarks/bench_train.py --device cuda       # on a GPU (benchmarks/gpu.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from plmkit.config import ModelConfig  # noqa: E402
from plmkit.models import build_model  # noqa: E402
from plmkit.models.base import use_chunked_loss  # noqa: E402
from plmkit.models.layers import use_fast_dropout  # noqa: E402
from plmkit.train.allocator import allocator_in_use, apply_malloc_setting, tcmalloc_path  # noqa: E402
from plmkit.train.blockwise import BlockRunner  # noqa: E402
from plmkit.train.loop import TrainConfig, loss_chunk_for  # noqa: E402
from plmkit.train.optim import build_optimizer  # noqa: E402

SHAPES = {"bert-mini": (32, 128), "bert-base": (8, 128), "gpt-small": (16, 256), "gpt2": (4, 256),
          "minilm-sst2": (32, 128)}
"""Model -> (batch, length) of the full-row workload (minilm-sst2: batch, max_length)."""
FINETUNE = {"minilm-sst2": "minilm"}
"""Fine-tuning workloads -> the model shape (common.WORKLOAD_PRESETS)."""
VARIANT_PARTS = ("default", "compile", "compile-static", "fast-dropout", "torch-dropout", "loss-chunk", "full-logits",
                 "checkpointing")
REAL_MIN_LENGTH = 16
MASK_PROB = 0.15
CLS, SEP, MASK = 101, 102, 103
LR = 1e-4
PASS_STEPS = 32
"""minilm-sst2: optimizer steps per timed pass (one bucketing window of FeatureBatches)."""
DATA = Path(os.environ.get("PLMKIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@dataclass
class Batch:
    """One timed unit's inputs for each side (one or more optimizer steps), and the work it represents."""

    hf: list[dict[str, torch.Tensor]]
    ours: list[dict[str, torch.Tensor]]
    tokens: int
    flops: float  # model FLOPs of forward + backward (3 x forward)
    rows_ours: float


@dataclass
class Workload:
    model: str
    real_length: bool
    batches: list[Batch] = field(default_factory=list)

    @property
    def name(self) -> str:
        b, t = SHAPES[self.model]
        if self.model in FINETUNE:
            return f"{self.model} {b}x<={t} fine-tune"
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
    return Batch([hf], [ours], tokens, flops, ours["input_ids"].size(0))


def make_workload(cfg: ModelConfig, model: str, real_length: bool, n_batches: int = 3, seed: int = 0) -> Workload:
    if model in FINETUNE:
        return make_finetune_workload(cfg, model, seed)
    rng = np.random.default_rng(seed)
    b, t = SHAPES[model]
    w = Workload(model, real_length)
    for _ in range(n_batches):
        lengths = common.random_lengths(rng, b, REAL_MIN_LENGTH, t) if real_length else [t] * b
        w.batches.append(make_batch(cfg, lengths, t, real_length, rng))
    return w


def sst2_missing() -> str | None:
    """Why the SST-2 fine-tuning workload cannot run here (None when it can)."""
    needed = [DATA / "sst2" / "train.tsv", DATA / "vocab" / "bert-base-uncased-vocab.txt"]
    absent = [str(p) for p in needed if not p.is_file()]
    return f"not found: {', '.join(absent)} (set PLMKIT_SHARED_DATA)" if absent else None


def make_finetune_workload(cfg: ModelConfig, model: str, seed: int = 0, passes: int = 2) -> Workload:
    """`passes` units of PASS_STEPS batches of real SST-2 sentences (a fresh random draw each)."""
    from plmkit.data.tasks import collate
    from plmkit.data.tasks.classification import encode_classification, read_classification
    from plmkit.data.tokenizer import Tokenizer
    from plmkit.recipes.batches import FeatureBatches

    b, t = SHAPES[model]
    tokenizer = Tokenizer.load(DATA / "vocab" / "bert-base-uncased-vocab.txt")
    examples = read_classification(DATA / "sst2" / "train.tsv")
    rng = np.random.default_rng(seed)
    w = Workload(model, real_length=True)
    for _ in range(passes):
        picked = [examples[i] for i in rng.choice(len(examples), PASS_STEPS * b, replace=False)]
        features = encode_classification(picked, tokenizer, None, max_length=t)
        for feature, example in zip(features, picked):
            feature["labels"] = int(example.label)
        hf = [collate(features[i: i + b], tokenizer.pad_id) for i in range(0, len(features), b)]
        ours = list(FeatureBatches(features, b, tokenizer.pad_id, seed=seed))  # the recipes' default bucketing
        lengths = [len(f["input_ids"]) for f in features]
        flops = 3 * common.forward_flops(cfg, sum(lengths), common.attended_pairs(lengths, False), 0, len(lengths))
        w.batches.append(Batch(hf, ours, sum(lengths), flops, len(ours)))
    return w


def to_device(w: Workload, device: torch.device) -> None:
    for batch in w.batches:
        for side in (batch.hf, batch.ours):
            for i, tensors in enumerate(side):
                side[i] = {k: v.to(device) for k, v in tensors.items()}


# --------------------------------------------------------------------------- models and steps


@dataclass
class Side:
    """One implementation under test: model, optimizer, and (plmkit variants) the block runner."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    runner: BlockRunner | None = None
    description: str = ""
    first_step_s: float = float("nan")


def task_of(name: str, cfg: ModelConfig) -> str:
    if name in FINETUNE:
        return "sequence-classification"
    return "pretraining" if cfg.arch == "encoder" else "causal-lm"


def build_hf(name: str, cfg: ModelConfig, device: torch.device) -> Side:
    import transformers

    task = task_of(name, cfg)
    cls = {"pretraining": transformers.BertForPreTraining, "causal-lm": transformers.GPT2LMHeadModel,
           "sequence-classification": transformers.BertForSequenceClassification}[task]
    torch.manual_seed(0)
    hf = cls(common.hf_config(cfg, task)).to(device).train()
    opt = torch.optim.AdamW(hf.parameters(), lr=LR, weight_decay=0.01)
    fill = "padded to the longest row"
    return Side(hf, opt, description=f"{cls.__name__}, attn={hf.config._attn_implementation}, torch.optim.AdamW("
                f"lr={LR}, weight_decay=0.01, foreach={opt.defaults['foreach']}, fused={opt.defaults['fused']}), {fill}")


def build_plmkit(name: str, cfg: ModelConfig, variant: str, device: torch.device, loss_chunk: int) -> Side:
    """plmkit's model with the variant's settings (see the module docstring)."""
    parts = set(variant.split("+"))
    torch.manual_seed(0)
    model = build_model(cfg, task_of(name, cfg)).to(device).train()
    use_fast_dropout(model, "torch-dropout" not in parts and (TrainConfig().fast_dropout or "fast-dropout" in parts))
    chunk = 0 if "full-logits" in parts else loss_chunk if "loss-chunk" in parts else loss_chunk_for(
        TrainConfig().loss_chunk, device)
    use_chunked_loss(model, chunk)
    compiled = bool(parts & {"compile", "compile-static"})
    runner = BlockRunner(model, compile=compiled, checkpointing="checkpointing" in parts,
                         shapes="static" if "compile-static" in parts else "dynamic")
    opt = build_optimizer(model, lr=LR, weight_decay=0.01)
    settings = [f"fused={opt.defaults['fused']}", f"loss_chunk={chunk}"] + sorted(parts - {"default", "loss-chunk"})
    return Side(model, opt, runner, description=f"build_optimizer, {', '.join(settings)}")


def train_step(side: Side, units: list[Batch], precision: str, pad_id: int, device: torch.device,
               ours: bool) -> common.Step:
    def step(i: int) -> float:
        unit = units[i % len(units)]
        start = time.perf_counter()
        for batch in unit.ours if ours else unit.hf:
            if side.runner is not None:
                batch = side.runner.prepare(batch, pad_id, None)
            ctx = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
            with ctx:
                loss = side.model(**batch).loss
            loss.backward()
            side.optimizer.step()
            side.optimizer.zero_grad(set_to_none=True)
        common.sync(device)
        if side.first_step_s != side.first_step_s:  # NaN: the first call (includes any compile)
            side.first_step_s = time.perf_counter() - start
        return unit.tokens

    return step


def run_workload(sides: dict[str, Side], w: Workload, precision: str, pad_id: int, args: argparse.Namespace) -> list[dict]:
    steps = {name: train_step(side, w.batches, precision, pad_id, args.device, name != "transformers")
             for name, side in sides.items()}
    t = common.interleave(steps, args.warmup, args.rounds, args.per_round)
    flops_per_token = sum(b.flops for b in w.batches) / sum(b.tokens for b in w.batches)
    hf = t["transformers"].median_rate
    rows = []
    for name in sides:
        if name == "transformers":
            continue
        ours = t[name].median_rate
        lo, hi = common.ratio_spread(t["transformers"], t[name])
        rows.append({"workload": w.name, "precision": precision, "variant": name.removeprefix("plmkit "), "hf": hf,
                     "ours": ours, "ratio": ours / hf, "ratio_min": lo, "ratio_max": hi,
                     "cpu_ratio": t[name].median_cpu_rate / t["transformers"].median_cpu_rate,
                     "flops_per_token": flops_per_token, "steps": len(t[name].seconds),
                     "first_step_s": sides[name].first_step_s, "first_step_hf_s": sides["transformers"].first_step_s})
    return rows


def config_lines(cfg: ModelConfig, w: Workload, sides: dict[str, Side]) -> list[str]:
    b, t = SHAPES[w.model]
    hf_tokens = sum(x["input_ids"].numel() for u in w.batches for x in u.hf)
    our_tokens = sum(x["input_ids"].numel() for u in w.batches for x in u.ours)
    real = sum(u.tokens for u in w.batches)
    shape = f"batch {b}, length {t}"
    if w.model in FINETUNE:
        shape = f"batch {b} real SST-2 sentences (max_length {t}), {PASS_STEPS} steps per timed pass"
    elif w.real_length:
        shape += f", lengths uniform in [{REAL_MIN_LENGTH},{t}]"
    lines = [f"{w.name}: {common.describe(cfg)}; {shape}",
             f"  transformers: {sides['transformers'].description} (fill {real / hf_tokens:.2f})"]
    layout = ("length-bucketed FeatureBatches" if w.model in FINETUNE else
              f"packed into {sum(u.rows_ours for u in w.batches) / len(w.batches):.1f} rows of {t}" if w.real_length
              else "full rows")
    masked = "; MLM head at masked positions only (15%)" if cfg.arch == "encoder" and w.model not in FINETUNE else ""
    for name, side in sides.items():
        if name != "transformers":
            lines.append(f"  {name}: {side.description}, {layout} (fill {real / our_tokens:.2f}){masked}")
    return lines


# --------------------------------------------------------------------------- peak memory


def peak_memory(side: Side, w: Workload, precision: str, pad_id: int, device: torch.device, ours: bool) -> float:
    """Peak memory in MiB of 2 training steps of `side`: CUDA allocator peak, or (CPU) the growth of
    the process's resident high-water mark over its size before the first step."""
    step = train_step(side, w.batches, precision, pad_id, device, ours)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step(0), step(1)
        return torch.cuda.max_memory_allocated(device) / 2**20
    before = _status_kib("VmRSS")
    try:  # reset the high-water mark (Linux): ru_maxrss would carry the parent's peak across exec
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    step(0), step(1)
    peak = _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak - before) / 1024


def _status_kib(field: str) -> int:
    """A kB field of /proc/self/status (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_column(rows: list[dict], args: argparse.Namespace) -> None:
    """Fill rows' "peak_mib" (and "peak_mib_hf"): CPU sides each in a fresh process, so that no
    other side's memory is counted."""
    for r in rows:
        for side, key in ((f"plmkit {r['variant']}", "peak_mib"), ("transformers", "peak_mib_hf")):
            cmd = [sys.executable, __file__, "--probe-memory", side, "--models", r["model"], "--precision",
                   r["precision"], "--shapes", r["shape"], "--device", str(args.device), "--loss-chunk",
                   str(args.loss_chunk), "--variants", r["variant"]]
            cmd += [f"--{k}={getattr(args, k)}" for k in ("batch", "length") if getattr(args, k)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            lines = out.stdout.strip().splitlines()
            r[key] = float(lines[-1]) if out.returncode == 0 and lines else float("nan")


def probe_memory(args: argparse.Namespace) -> None:
    """--probe-memory SIDE: print the peak memory of that side alone (one model, one shape)."""
    name, precision = args.models[0], args.precision[0]
    cfg = common.plmkit_config(FINETUNE.get(name, name))
    w = make_workload(cfg, name, args.shapes[0] == "real")
    to_device(w, args.device)
    if args.probe_memory == "transformers":
        side, ours = build_hf(name, cfg, args.device), False
    else:
        side, ours = build_plmkit(name, cfg, args.probe_memory.removeprefix("plmkit "), args.device, args.loss_chunk), True
    print(f"{peak_memory(side, w, precision, cfg.pad_token_id, args.device, ours):.1f}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="bert-mini,gpt-small",
                   help=f"comma-separated, from {', '.join(SHAPES)} (default: bert-mini,gpt-small)")
    p.add_argument("--precision", default="fp32,bf16", help="fp32, bf16 (autocast) or both (default)")
    p.add_argument("--shapes", default="full,real",
                   help="full rows and/or real-length rows (lengths uniform in [16, T]); default both")
    p.add_argument("--variants", default="default",
                   help=f"plmkit sides, comma-separated; each one or more of {', '.join(VARIANT_PARTS)} joined by +")
    p.add_argument("--loss-chunk", type=int, default=1024, help="label positions per chunk for the loss-chunk variant")
    p.add_argument("--memory", action="store_true", help="also report the peak memory of each side")
    p.add_argument("--malloc", default=TrainConfig().malloc, choices=("default", "retain"),
                   help="TrainConfig.malloc for this whole process (both sides; default: TrainConfig's)")
    p.add_argument("--tcmalloc", action="store_true", help="rerun this process with tcmalloc preloaded")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch", type=int, help="rows per step for every chosen model (default: the table in SHAPES)")
    p.add_argument("--length", type=int, help="row length (minilm-sst2: max_length) for every chosen model")
    p.add_argument("--threads", type=int, default=common.THREADS, help="torch CPU threads (default 2)")
    p.add_argument("--quick", action="store_true", help="fewest steps: 1 warm-up, 5 rounds of 1 timed step")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per-round", type=int, default=2, help="timed steps per side per round")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--probe-memory", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.rounds, args.per_round = 1, 5, 1
    args.models = common.choices(p, "--models", args.models, SHAPES)
    args.precision = common.choices(p, "--precision", args.precision, common.DTYPES)
    args.shapes = common.choices(p, "--shapes", args.shapes, ("full", "real"))
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in args.variants:
        common.choices(p, "--variants", v.replace("+", ","), VARIANT_PARTS)
    args.device = torch.device(args.device)
    for name in args.models:  # --batch / --length: other shapes (a GPU wants larger steps)
        b, t = SHAPES[name]
        SHAPES[name] = (args.batch or b, args.length or t)
    if args.rounds * args.per_round < 5:
        p.error("at least 5 timed steps per side are needed (--rounds x --per-round >= 5)")
    return args


def relaunch_with_tcmalloc(argv: list[str]) -> int:
    path = tcmalloc_path()
    if path is None:
        print("--tcmalloc: tcmalloc is not installed (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)",
              file=sys.stderr)
        return 2
    env = dict(os.environ, LD_PRELOAD=f"{path} {os.environ.get('LD_PRELOAD', '')}".strip())
    argv = [a for a in argv if a != "--tcmalloc"]
    return subprocess.call([sys.executable, __file__, *argv], env=env)


def main(argv: list[str] | None = None) -> list[dict]:
    raw = sys.argv[1:] if argv is None else argv
    args = parse_args(raw)
    if args.tcmalloc and allocator_in_use() != "tcmalloc":
        sys.exit(relaunch_with_tcmalloc(raw))
    common.setup(args.threads)
    if args.probe_memory:
        probe_memory(args)
        return []
    allocator = apply_malloc_setting(args.malloc)
    print(f"# train step: forward + backward + AdamW. {common.environment()}, {allocator}, device {args.device}",
          flush=True)
    peaks = common.PeakMeter(device=str(args.device))
    peaks.measure(args.precision)
    results, configs = [], []
    for model in args.models:
        shapes = args.shapes
        if model in FINETUNE:
            missing = sst2_missing()
            if missing:
                print(f"  {model}: skipped, {missing}", flush=True)
                continue
            shapes = ["real"]
        cfg = common.plmkit_config(FINETUNE.get(model, model))
        sides = {"transformers": build_hf(model, cfg, args.device)}
        sides.update({f"plmkit {v}": build_plmkit(model, cfg, v, args.device, args.loss_chunk) for v in args.variants})
        for shape in shapes:
            w = make_workload(cfg, model, shape == "real")
            to_device(w, args.device)
            configs += config_lines(cfg, w, sides)
            for precision in args.precision:
                for r in run_workload(sides, w, precision, cfg.pad_token_id, args):
                    r.update(model=model, shape=shape)
                    results.append(r)
                    print(f"  {r['workload']} {precision} {r['variant']}: transformers {r['hf']:,.0f} tok/s, plmkit "
                          f"{r['ours']:,.0f} tok/s, x{r['ratio']:.2f}", flush=True)
        del sides
        common.free_memory()
    peaks.measure(args.precision)
    for r in results:
        r["peak_gflops"] = peaks.peak(r["precision"])
        r["mfu_hf"] = common.mfu(r["hf"] * r["flops_per_token"], r["peak_gflops"])
        r["mfu_ours"] = common.mfu(r["ours"] * r["flops_per_token"], r["peak_gflops"])
    if args.memory:
        memory_column(results, args)
    print_report(results, configs, peaks, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


def print_report(results: list[dict], configs: list[str], peaks: common.PeakMeter, args) -> None:
    header = ["workload", "precision", "plmkit", "HF tok/s", "plmkit tok/s", "ratio", "ratio range", "CPU-time ratio",
              "MFU HF", "MFU plmkit", "1st step s"]
    if args.memory:
        header += ["peak MiB HF", "peak MiB plmkit"]
    rows = []
    for r in results:
        row = [r["workload"], r["precision"], r["variant"], r["hf"], r["ours"], f"x{r['ratio']:.2f}",
               f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}", f"x{r['cpu_ratio']:.2f}", f"{r['mfu_hf']:.3f}",
               f"{r['mfu_ours']:.3f}", f"{r['first_step_s']:.1f}"]
        if args.memory:
            row += [r["peak_mib_hf"], r["peak_mib"]]
        rows.append(row)
    print()
    print(common.format_table(header, rows))
    print(f"\nmedian of {args.rounds * args.per_round} timed steps per side after {args.warmup} warm-up, "
          f"{args.rounds} interleaved rounds; ratio = plmkit / transformers; ratio range = min-max over rounds; "
          "CPU-time ratio = the same ratio from process CPU time per step (less sensitive to other jobs); "
          "1st step s = the plmkit side's first step (with any compile), for the first precision run")
    if args.memory:
        print("peak MiB: CUDA allocator peak over 2 steps, or on CPU the growth of the resident high-water mark "
              "over 2 steps of that side alone in a fresh process")
    print(f"matmul peak (torch.mm, start + end of run): {peaks.summary()}")
    print("MFU = model FLOPs (real tokens, masked-position MLM head, no padding) / time / peak")
    print("\n".join(configs))


if __name__ == "__main__":
    main()
