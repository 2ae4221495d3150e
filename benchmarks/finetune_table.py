"""Does pretraining pay downstream? Every fine-tuning task from a small plmkit-pretrained model and from scratch.

For each task, the same shape is fine-tuned twice with the same data, steps, learning rate and
seed: once from a plmkit-pretrained checkpoint, once from random weights. Real data from ../shared/data:

- sst2: SST-2 sentiment (English), dev accuracy;
- chnsenticorp: ChnSentiCorp sentiment (Chinese), dev accuracy, from a Chinese BERT-mini that
  this script pretrains (MLM, whole-word masking with jieba) for `--zh-minutes` on Chinese
  text in ../shared/data (ChnSentiCorp train reviews, CMRC 2018 contexts, CSL abstracts);
- conll: CoNLL-2003 NER, dev entity F1 (seqeval);
- squad: SQuAD v1.1 (only its dev set is shipped: the first 38 articles train, the last 10 are
  dev), EM / F1;
- translation: Multi30k en->de, encoder-decoder warm-started from the BERT (`warm_start`) vs
  the same encoder-decoder from scratch, BLEU / chrF (sacrebleu) on 500 val pairs (with the
  bert-base-uncased vocabulary the German output is lowercased and loses its umlauts, which
  costs both sides most of their BLEU: compare the two, not with published Multi30k figures);
- summarization: SciTLDR-A (abstract -> TL;DR), same warm start, ROUGE-1/2/L on 300 dev examples.

The English model is a BERT checkpoint (e.g. the one `pretrain_quality.py` leaves in
OUT/run/final). Results go to OUT/table.json and a Markdown table on stdout.

    python benchmarks/finetune_table.py --english runs/quality/run/final -o runs/table
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from plmkit.data.shards import prepare, unigram_baseline
from plmkit.recipes.finetune import finetune
from plmkit.recipes.pretrain import load_config, pretrain
from plmkit.rundir import model_dir
from plmkit.train.loop import TrainResult
from quality_data import SQUAD_TRAIN_ARTICLES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = ("sst2", "chnsenticorp", "conll", "squad", "translation", "summarization")
SIDES = ("pretrained", "scratch")
DROPOUT = {"dropout": 0.1, "attention_dropout": 0.1}


def pretrain_for_minutes(config: str, overrides: list[str], minutes: float, out: Path) -> TrainResult:
    """Pretrain so that the LR schedule ends at `minutes`: time a short and a longer probe run, then
    run as many steps as fit. The rate is the difference of the two probes' training loops (the
    start-up before the loop, e.g. the co-occurrence vectors, varies from run to run and would
    otherwise count as training time); the budget is what the short probe's start-up leaves."""
    wall, loop = {}, {}
    for steps in (10, 40):
        probe = load_config(config, overrides + [f"train.max_steps={steps}", "train.save_every=0",
                                                 "data.eval_examples=0", "train.progress=false"])
        t0 = time.perf_counter()
        loop[steps] = pretrain(probe, out / f"probe-{steps}").elapsed_s
        wall[steps] = time.perf_counter() - t0
    steps_per_s = 30 / max(loop[40] - loop[10], 1e-3)
    steps = max(50, int((minutes * 60 - (wall[10] - loop[10])) * steps_per_s * 0.97))
    print(f"calibration: {steps_per_s:.2f} steps/s -> {steps} steps for {minutes} min", flush=True)
    cfg = load_config(config, overrides + [f"train.max_steps={steps}", f"train.eval_every={max(steps // 10, 1)}",
                                           f"train.warmup_steps={max(steps * 6 // 100, 1)}"])
    return pretrain(cfg, out / "run")


def finetune_pair(task: str, pretrained: Path, out: Path, fields: dict[str, Any], caps: dict[str, int] | None = None,
                  sides: tuple[str, ...] = SIDES) -> dict[str, dict[str, float]]:
    """Dev metrics (best checkpoint) of `task` fine-tuned from `pretrained` and from scratch (`sides`),
    with the same fields (data, steps, learning rate, seed) and dropout 0.1."""
    results = {}
    for name in sides:
        t0 = time.perf_counter()
        result = finetune(task, model=str(pretrained), out=str(out / name), from_scratch=name == "scratch",
                          model_overrides=DROPOUT, **{**fields, **(caps or {})})
        metrics = {k: float(v) for k, v in result.dev_metrics.items() if isinstance(v, (int, float))}
        results[name] = {**metrics, "minutes": (time.perf_counter() - t0) / 60, "steps": result.train.step}
        print(f"  {out.name} {name}: {result.metric} {result.best_value:.4f} "
              f"({results[name]['minutes']:.1f} min, {result.train.step} steps)", flush=True)
    return results


def train_settings(steps: int, lr: float, batch_size: int = 32, evals: int = 4) -> dict[str, Any]:
    return {"lr": lr, "max_steps": steps, "warmup_steps": steps // 10, "batch_size": batch_size,
            "eval_every": max(steps // evals, 1), "save_every": 0, "precision": "bf16", "progress": False}


# --------------------------------------------------------------------------- data


def chinese_corpus(out: Path) -> Path:
    """ChnSentiCorp train reviews, CMRC 2018 contexts and CSL abstracts, one document per paragraph."""
    docs: list[str] = []
    with open(SHARED / "chnsenticorp" / "train.tsv", encoding="utf-8", newline="") as f:
        docs += [row["text_a"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    for name in ("cmrc2018_dev.json", "cmrc2018_trial.json"):
        data = json.loads((SHARED / "cmrc2018" / name).read_text(encoding="utf-8"))["data"]
        docs += list(dict.fromkeys(p["context"] for a in data for p in a["paragraphs"]))
    for name in ("dev.tsv", "test.tsv"):
        with open(SHARED / "csl-ts" / name, encoding="utf-8") as f:
            docs += [line.split("\t")[1] for line in f.read().splitlines()[1:] if line.count("\t") >= 1]
    path = out / "corpus-zh.txt"
    path.write_text("\n\n".join(" ".join(d.split()) for d in docs if d.strip()) + "\n", encoding="utf-8")
    return path


def squad_split(out: Path) -> tuple[Path, Path]:
    """SQuAD v1.1 dev split by article: the first SQUAD_TRAIN_ARTICLES (38) for training, 10 for evaluation."""
    with zipfile.ZipFile(SHARED / "squad-v1.1" / "dev-v1.1.json.zip") as z:
        squad = json.loads(z.read("dev-v1.1.json"))
    paths = []
    for name, articles in (("train", squad["data"][:SQUAD_TRAIN_ARTICLES]), ("dev", squad["data"][SQUAD_TRAIN_ARTICLES:])):
        path = out / f"squad-{name}.json"
        path.write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def multi30k_dev(out: Path, n: int = 500) -> Path:
    """The first n Multi30k val pairs as parallel files OUT/val.en, OUT/val.de."""
    for lang in ("en", "de"):
        with gzip.open(SHARED / "multi30k" / f"val.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()[:n]
        (out / f"val.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out / "val"


# --------------------------------------------------------------------------- tasks


def run_task(task: str, english: Path, chinese: Path | None, out: Path, scale: float = 1.0,
             limit: int | None = None, sides: tuple[str, ...] = SIDES) -> dict[str, Any]:
    """Fine-tune `task` both ways; `scale` multiplies the steps, `limit` caps train/dev examples (smoke runs).
    Both sides share one learning rate per task (what suits the from-scratch model; higher than usual
    for pretrained BERTs, because a 4-layer model pretrained briefly underfits at 1e-4)."""
    steps = lambda n: max(20, int(n * scale))  # noqa: E731
    caps = {} if limit is None else {"max_train_examples": limit, "max_dev_examples": limit}
    d = SHARED
    if task == "sst2":
        fields = dict(train_file=str(d / "sst2" / "train.tsv"), dev_file=str(d / "sst2" / "dev.tsv"), max_length=64,
                      bucket=32, train=train_settings(steps(2000), 5e-4))
        return finetune_pair("classification", english, out, fields, caps, sides)
    if task == "chnsenticorp":
        if chinese is None:
            raise ValueError("chnsenticorp needs a Chinese checkpoint")
        fields = dict(train_file=str(d / "chnsenticorp" / "train.tsv"), dev_file=str(d / "chnsenticorp" / "dev.tsv"),
                      text_column="text_a", max_length=128, bucket=32, train=train_settings(steps(900), 5e-4))
        return finetune_pair("classification", chinese, out, fields, caps, sides)
    if task == "conll":
        fields = dict(train_file=str(d / "conll2003" / "train.txt"), dev_file=str(d / "conll2003" / "dev.txt"),
                      bucket=32, train=train_settings(steps(1500), 1e-3))
        return finetune_pair("ner", english, out, fields, caps, sides)
    if task == "squad":
        train, dev = squad_split(out.parent)
        fields = dict(train_file=str(train), dev_file=str(dev), max_length=192, doc_stride=64,
                      train=train_settings(steps(600), 1e-3, batch_size=16, evals=2))
        return finetune_pair("qa", english, out, fields, caps, sides)
    if task == "translation":
        fields = dict(train_file=str(d / "multi30k" / "train"), dev_file=str(multi30k_dev(out.parent)),
                      source_lang="en", target_lang="de", warm_start=True, max_source_length=64, max_target_length=64,
                      bucket=32, train=train_settings(steps(1500), 5e-4, evals=2))
        return finetune_pair("translation", english, out, fields, caps, sides)
    if task == "summarization":
        fields = dict(train_file=str(d / "scitldr-a" / "train.jsonl"), dev_file=str(d / "scitldr-a" / "dev.jsonl"),
                      warm_start=True, max_source_length=256, max_target_length=64, max_dev_examples=300, bucket=16,
                      no_repeat_ngram_size=3,
                      train=train_settings(steps(600), 5e-4, batch_size=16, evals=2))
        return finetune_pair("summarization", english, out, fields, caps, sides)
    raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--english", type=Path, required=True, help="pretrained English BERT checkpoint")
    parser.add_argument("--chinese", type=Path, help="pretrained Chinese BERT checkpoint (default: pretrain one)")
    parser.add_argument("--zh-minutes", type=float, default=10.0, help="pretraining budget of the Chinese BERT")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every task's steps")
    parser.add_argument("--sides", default="pretrained,scratch", help="which runs (results of the other are kept)")
    parser.add_argument("--limit", type=int, help="at most this many train and dev examples per task (smoke runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=Path("runs/table"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    tasks = args.tasks.split(",")
    table_path = args.output / "table.json"
    table: dict[str, Any] = json.loads(table_path.read_text()) if table_path.exists() else {}
    chinese = args.chinese
    if "chnsenticorp" in tasks and chinese is None:
        zh = args.output / "pretrain-zh"
        zh.mkdir(exist_ok=True)
        shards = prepare([chinese_corpus(zh)], SHARED / "vocab" / "bert-base-chinese-vocab.txt", zh / "shards",
                         holdout=0.02)
        result = pretrain_for_minutes("bert-mini", [f"data.path={shards}", "data.objective=roberta",
                                                    "data.options.whole_word=true", "train.progress=false"],
                                      args.zh_minutes, zh)
        history = ", ".join(f"{e['step']}: {e['eval_loss']:.3f}" for e in result.eval_history)
        baseline = unigram_baseline(shards)
        print(f"Chinese BERT-mini held-out MLM loss by step: {history}; unigram baseline {baseline:.3f}", flush=True)
        table["chinese_pretraining"] = {"eval_history": result.eval_history, "minutes": result.elapsed_s / 60,
                                        "unigram_baseline": baseline}
        chinese = model_dir(result.out_dir)  # its best/ (lowest held-out loss), else final/
    for task in tasks:
        print(f"== {task}", flush=True)
        runs = run_task(task, args.english, chinese, args.output / task, args.scale, args.limit,
                        tuple(args.sides.split(",")))
        table[task] = {**table.get(task, {}), **runs}
        table_path.write_text(json.dumps(table, indent=2))
    print("\n| task | metric | pretrained | scratch |\n|---|---|---:|---:|")
    for task in (t for t in TASKS if t in table):
        runs = [table[task].get(side, {}) for side in SIDES]
        for metric in sorted({k for run in runs for k in run} - {"minutes", "steps"}):
            cells = " | ".join(f"{run[metric]:.4f}" if metric in run else "-" for run in runs)
            print(f"| {task} | {metric} | {cells} |")


if __name__ == "__main__":
    main()
