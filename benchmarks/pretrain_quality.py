"""Does pretraining pay? One command: pretrain for a CPU budget, then fine-tune the result and the same
shape from scratch on every task and label fraction, next to bag-of-words baselines.

    python benchmarks/pretrain_quality.py --minutes 45 -o runs/quality
    python benchmarks/pretrain_quality.py --minutes 45 --config bert-mini --embeddings random -o runs/q-mlm
    python benchmarks/pretrain_quality.py --pretrained runs/quality/run/final --sides pretrained -o runs/q-final
        # the same fine-tuning protocol for any model (here the last step of a run instead of its best/)

1. Corpus: general English plus the unlabelled training texts of the tasks (quality_data.py); the
   bert-base-uncased vocabulary; 2% of the documents held out.
2. Pretraining with the recipe (a preset, `--embeddings cooccurrence|random`, `--set` overrides) for
   `--minutes`: the step count is calibrated from two short probe runs so that the LR schedule ends
   at the budget (the co-occurrence stage counts in the budget). Held-out loss next to the unigram
   plateau of the same held-out tokens. The run's best/ (lowest held-out loss) is what is fine-tuned.
3. Fine-tuning, for the pretrained model and for the same shape from random weights alike: SST-2 at
   1% (3 seeds), 10% and 100% of the labels, AG News at 1% (3 seeds) and 10%, CoNLL-2003 NER; with
   `plmkit finetune`'s own defaults (no tuning flags), or with `--lrs` the best of the same learning
   rates for both sides. TF-IDF + logistic regression and naive Bayes on the same label draws.
4. `--hf-minutes`: `transformers` + `Trainer` pretraining the same shape with MLM on the same
   tokens and held-out split, its held-out loss measured here (the reference is re-measured, not
   quoted).

Writes OUT/summary.json and OUT/curve.png (accuracy / F1 by label fraction for each task).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from finetune_table import pretrain_for_minutes
from quality_data import TASK_TEXTS, VOCAB, Task, bag_of_words_baselines, general_documents, tasks, write_corpus
from plmkit.data.shards import ShardSet, prepare, unigram_baseline
from plmkit.recipes.finetune import finetune
from plmkit.rundir import model_dir

DROPOUT = {"dropout": 0.1, "attention_dropout": 0.1}


def build_shards(out: Path) -> Path:
    documents = general_documents()
    for name, texts in TASK_TEXTS.items():
        documents += texts()
    corpus = write_corpus(out / "corpus.txt", documents)
    return prepare([corpus], VOCAB, out / "shards", holdout=0.02)


def finetune_runs(task: Task, model: Path, out: Path, lrs: list[float] | None, seeds: int,
                  sides: tuple[str, ...] = ("pretrained", "scratch")) -> dict[str, Any]:
    """Dev metric per (side, fraction): mean and runs over seeds; with `lrs`, the best LR per side."""
    results: dict[str, Any] = {}
    for fraction in task.fractions:
        draws = list(range(seeds if fraction < 0.5 else 1))
        for side in sides:
            best: dict[str, Any] | None = None
            for lr in lrs or [None]:
                runs = []
                for seed in draws:
                    train = {"seed": seed, "progress": False, "save_every": 0, "eval_every": 0}
                    if lr is not None:
                        train["lr"] = lr
                    started = time.perf_counter()
                    result = finetune(task.recipe, model=str(model), from_scratch=side == "scratch",
                                      out=str(out / task.name / f"{side}-{fraction}-{lr}-{seed}"), train_fraction=fraction,
                                      model_overrides=DROPOUT, train=train, **task.fields)
                    runs.append(float(result.dev_metrics[task.metric]))
                    print(f"  {task.name} {side} {fraction:g} lr={lr or 'default'} seed {seed}: {task.metric} "
                          f"{runs[-1]:.4f} ({result.train.step} steps, {time.perf_counter() - started:.0f} s)", flush=True)
                entry = {"mean": sum(runs) / len(runs), "runs": runs, "lr": lr or "default"}
                if best is None or entry["mean"] > best["mean"]:
                    best = entry
            results.setdefault(side, {})[f"{fraction:g}"] = best
        if task.recipe == "classification":
            results.setdefault("baselines", {})[f"{fraction:g}"] = bag_of_words_baselines(task, fraction, draws)
    return results


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in summary["tasks"] if len(summary["tasks"][n].get("pretrained", {})) > 1
             and "scratch" in summary["tasks"][n]]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5 * max(1, len(names)), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        result = summary["tasks"][name]
        fractions = sorted(result["pretrained"], key=float)
        x = [float(f) * 100 for f in fractions]
        for side, style in (("pretrained", "o-"), ("scratch", "s--")):
            ax.plot(x, [result[side][f]["mean"] for f in fractions], style, label=side)
        for base in ("tfidf_logreg", "naive_bayes"):
            if "baselines" in result:
                ax.plot(x, [result["baselines"][f][base] for f in fractions], ":", label=base.replace("_", " "))
        ax.set_xscale("log")
        ax.set_xlabel("% of training labels")
        ax.set_ylabel("dev accuracy")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    minutes = summary["pretraining"].get("minutes")
    fig.suptitle(f"pretrained ({minutes:.0f} min) vs from scratch" if minutes else "pretrained vs from scratch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pretrain_step(args: argparse.Namespace, out: Path) -> tuple[Path, dict[str, Any]]:
    """Build the corpus, pretrain for the budget (and the transformers reference); the model to
    fine-tune (the run's best/, else final/) and the summary so far."""
    shards = build_shards(out)
    baseline = unigram_baseline(shards)
    print(f"corpus: {ShardSet.open(shards).num_tokens:,} train tokens; held-out unigram plateau {baseline:.3f} nats",
          flush=True)
    overrides = [f"data.path={shards}", f"embeddings.init={args.embeddings}", *args.overrides]
    result = pretrain_for_minutes(args.config, overrides, args.minutes, out)
    history = result.eval_history
    print("held-out loss by step: " + ", ".join(f"{e['step']}: {e['eval_loss']:.3f}" for e in history), flush=True)
    model = model_dir(result.out_dir)  # best/ (the lowest held-out loss), else final/
    best = min(history, key=lambda e: e["eval_loss"]) if history else {}
    print(f"fine-tuning {model} (held-out loss {best.get('eval_loss', float('nan')):.3f} at step {best.get('step')})",
          flush=True)
    summary: dict[str, Any] = {
        "recipe": {"config": args.config, "embeddings": args.embeddings, "overrides": args.overrides},
        "pretraining": {"minutes": result.elapsed_s / 60, "steps": result.step, "tokens_seen": result.tokens_seen,
                        "eval_history": history, "unigram_plateau": baseline, "model": str(model)},
        "tasks": {}, "load_average_start": os.getloadavg()[0],
    }
    if args.hf_minutes > 0:
        from hf_mlm_reference import hf_mlm_reference

        summary["transformers_reference"] = hf_mlm_reference(shards, args.config, args.hf_minutes, out / "hf")
        print(f"transformers + Trainer: {summary['transformers_reference']}", flush=True)
    return model, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=45.0, help="pretraining budget")
    parser.add_argument("--config", default="bert-mini", help="preset of the pretrained model")
    parser.add_argument("--embeddings", choices=("cooccurrence", "random"), default="cooccurrence")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="pretraining overrides")
    parser.add_argument("--tasks", default="sst2,agnews,conll")
    parser.add_argument("--fractions", default=None,
                        help="comma-separated label fractions for every classification task (default: each task's own)")
    parser.add_argument("--lrs", default=None, help="comma-separated LRs searched for both sides (default: plmkit's own)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds at label fractions under 50%%")
    parser.add_argument("--hf-minutes", type=float, default=0.0, help="transformers + Trainer MLM reference budget")
    parser.add_argument("--pretrained", type=Path, default=None,
                        help="skip pretraining: fine-tune this model (a model folder or run) with the same protocol")
    parser.add_argument("--sides", default="pretrained,scratch", help="which sides to fine-tune")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=Path("runs/quality"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    if args.pretrained is not None:
        model = model_dir(args.pretrained)
        summary: dict[str, Any] = {"pretraining": {"model": str(model)}, "tasks": {},
                                   "load_average_start": os.getloadavg()[0]}
    else:
        model, summary = pretrain_step(args, out)
    lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else None
    all_tasks = tasks()
    for name in args.tasks.split(","):
        print(f"== {name}", flush=True)
        task = all_tasks[name]
        if args.fractions and task.recipe == "classification":
            task = dataclasses.replace(task, fractions=tuple(float(x) for x in args.fractions.split(",")))
        summary["tasks"][name] = finetune_runs(task, model, out / "finetune", lrs, args.seeds,
                                               tuple(args.sides.split(",")))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["load_average_end"] = os.getloadavg()[0]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(summary, out / "curve.png")
    print(table(summary))


def table(summary: dict[str, Any]) -> str:
    lines = ["| task | labels | pretrained | from scratch | difference | TF-IDF+LR | naive Bayes |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, result in summary["tasks"].items():
        fractions = next(iter(result[side] for side in ("pretrained", "scratch") if side in result), {})
        for fraction in fractions:
            pre, scratch = (result.get(side, {}).get(fraction, {}).get("mean") for side in ("pretrained", "scratch"))
            base = result.get("baselines", {}).get(fraction, {})
            cells = [f"{v:.4f}" if v is not None else "-" for v in (pre, scratch)]
            cells.append(f"{(pre - scratch) * 100:+.1f}" if pre is not None and scratch is not None else "-")
            cells += [f"{base[k]:.4f}" if k in base else "-" for k in ("tfidf_logreg", "naive_bayes")]
            lines.append(f"| {name} | {float(fraction):.0%} | " + " | ".join(cells) + " |")
    p = summary["pretraining"]
    if p.get("eval_history"):
        last = p["eval_history"][-1]["eval_loss"]
        best = min(p["eval_history"], key=lambda e: e["eval_loss"])
        lines.append(f"\npretraining: {p['steps']} steps in {p['minutes']:.1f} min, held-out loss {last:.3f} at the "
                     f"end, lowest {best['eval_loss']:.3f} at step {best['step']} (unigram plateau "
                     f"{p['unigram_plateau']:.3f}); fine-tuned: {p['model']}")
    else:
        lines.append(f"\nfine-tuned: {p['model']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
