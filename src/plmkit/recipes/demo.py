"""`plmkit demo`: the whole workflow on the bundled samples in a few CPU minutes.

1. trains a WordPiece and a byte-level BPE tokenizer,
2. tokenizes the corpora into shards,
3. pretrains a small BERT on the English samples and the SST-2 training sentences without their
   labels, in two stages: co-occurrence token embeddings (seconds), then masked LM from them;
   and a small GPT (next-token prediction),
4. fine-tunes for sentiment (SST-2 sample) with 10% (3 seeds) and with all of the labels, from
   each BERT stage and from random weights, with plmkit's fine-tuning defaults for each,
5. shows the nearest words of the embeddings, fills masks with the BERT and generates with the GPT,
and prints a summary; ``report.html`` (one self-contained page, `plmkit.recipes.report`) shows
every loss curve with its evaluations, the pretrained-vs-scratch accuracy, the samples and the
time of each stage. Every step is one public plmkit call. The samples ship with the package
(``plmkit/demo_data``, see its README.md for sources and licenses).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any

from plmkit.cli_args import add_output
from plmkit.data.shards import prepare, unigram_baseline
from plmkit.data.tokenizer import Tokenizer
from plmkit.outputs import DEMO, claim_output
from plmkit.recipes.best_checkpoint import read_best
from plmkit.recipes.pretrain import best_line, load_config, pretrain, save_initial_model
from plmkit.recipes.report import write_html_report
from plmkit.rundir import BEST_DIR, METRICS_FILE, model_dir

SAMPLES = ("tinyshakespeare.txt", "wikitext2-valid.txt", "sst2-train.tsv", "sst2-dev.tsv")
"""The files the demo reads from its data folder."""


def bundled_data() -> Path:
    """The folder of the samples shipped with the package (plmkit/demo_data)."""
    folder = resources.files("plmkit") / "demo_data"
    if not isinstance(folder, Path):  # a zipped install: nothing to hand to file readers
        raise FileNotFoundError("plmkit's demo samples are inside a zip archive here; unpack them and pass --data DIR")
    return folder


def check_data(folder: Path) -> None:
    """FileNotFoundError naming the samples `folder` lacks."""
    missing = [name for name in SAMPLES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: the demo's samples are missing ({', '.join(missing)}); "
                                "reinstall plmkit, or pass --data DIR with these files")


def _banner(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def _lines(path: Path, column: int | None = None) -> list[str]:
    rows = path.read_text(encoding="utf-8").split("\n")
    if column is None:
        return [r for r in rows if r.strip()]
    return [r.split("\t")[column] for r in rows[1:] if r.strip()]


def train_tokenizers(data: Path, out: Path) -> tuple[Path, Path]:
    _banner("1. tokenizers")
    english = _lines(data / "wikitext2-valid.txt") + _lines(data / "tinyshakespeare.txt")
    english += _lines(data / "sst2-train.tsv", column=0)
    wordpiece = Tokenizer.train(english, kind="wordpiece", vocab_size=8000, lowercase=True)
    wordpiece.save(out / "tok-wordpiece")
    bpe = Tokenizer.train(_lines(data / "tinyshakespeare.txt"), kind="bpe", vocab_size=2000)
    bpe.save(out / "tok-bpe")
    sample = "A gripping, funny film."
    print(f"WordPiece ({wordpiece.vocab_size} tokens): {wordpiece.encode(sample).tokens}")
    print(f"byte-level BPE ({bpe.vocab_size} tokens): {bpe.encode(sample).tokens}")
    return out / "tok-wordpiece", out / "tok-bpe"


def pretrain_models(data: Path, out: Path, wordpiece: Path, bpe: Path, scale: float) -> dict:
    _banner("2. token shards")
    # The SST-2 training sentences without their labels join the BERT's text (task-adaptive
    # pretraining); the dev sentences never do.
    task_text = out / "sst2-train-sentences.txt"
    task_text.write_text("\n".join(_lines(data / "sst2-train.tsv", column=0)) + "\n", encoding="utf-8")
    bert_shards = prepare([data / "wikitext2-valid.txt", data / "tinyshakespeare.txt", task_text], wordpiece,
                          out / "shards-bert", holdout=0.02)
    gpt_shards = prepare([data / "tinyshakespeare.txt"], bpe, out / "shards-gpt", holdout=0.02)

    _banner("3a. pretraining a small BERT: co-occurrence embeddings, then masked LM")
    bert_steps = max(20, int(300 * scale))
    bert_cfg = load_config("bert-mini", [f"data.path={bert_shards}", "data.objective=roberta", "data.max_length=64",
                                         f"train.max_steps={bert_steps}", f"train.warmup_steps={bert_steps // 10}",
                                         f"train.eval_every={max(bert_steps // 4, 1)}", "train.save_every=0",
                                         "data.eval_examples=256"])
    # Stage 1 (seconds): token embeddings from the corpus' co-occurrences, layers random. Stage 2
    # continues from it with masked LM (init_from keeps the embeddings), with the preset's recipe:
    # 40% masking, and layer-wise LR decay so the embeddings learn at 1/32 of the top rate and keep
    # what stage 1 gave them.
    embeddings = save_initial_model(bert_cfg, out / "bert-embeddings")
    print(f"co-occurrence embeddings of {bert_cfg.model.hidden_size} dimensions: {embeddings}")
    bert = pretrain(dataclasses.replace(bert_cfg, init_from=str(embeddings)), out / "bert")
    _report(bert)

    _banner("3b. pretraining a small GPT (next-token prediction)")
    gpt_steps = max(20, int(400 * scale))
    gpt_cfg = load_config("gpt-tiny", [f"data.path={gpt_shards}", "data.max_length=128", "model.num_layers=4",
                                       "model.hidden_size=256", "model.num_heads=4", "model.intermediate_size=1024",
                                       f"train.max_steps={gpt_steps}", f"train.warmup_steps={gpt_steps // 10}",
                                       f"train.eval_every={max(gpt_steps // 4, 1)}", "train.save_every=0",
                                       "data.eval_examples=128", "model.dropout=0.0", "model.attention_dropout=0.0"])
    gpt = pretrain(gpt_cfg, out / "gpt")
    _report(gpt)
    return {"bert-embeddings": embeddings, "bert": bert, "gpt": gpt, "unigram": unigram_baseline(bert_shards)}


def _report(result) -> None:
    last = result.eval_history[-1]
    scores = ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k != "step")
    print(f"{result.step} steps in {result.elapsed_s / 60:.1f} min, {result.tokens_seen:,} tokens; held-out: {scores}")
    best = best_line(result.out_dir)
    if best:
        print(best)


LABEL_FRACTIONS = (0.1, 1.0)
"""Fractions of the SST-2 sample's training labels the demo fine-tunes on."""
SEEDS = (0, 1, 2)
"""Seeds (label draw and initialisation) below 100% of the labels, where one run is noisy."""


def run_name(side: str, fraction: float) -> str:
    """The name of one fine-tuning setting, e.g. 'pretrained, 10% of labels'."""
    return f"{side}, {fraction:.0%} of labels"


def run_folder(name: str, seed: int = 0) -> str:
    """The folder of one run of the setting `name`: 'sst2-pretrained-10pct-of-labels' (seed 0),
    'sst2-pretrained-10pct-of-labels-seed1', ..."""
    folder = "sst2-" + re.sub(r"[^a-z0-9]+", "-", name.lower().replace("+", " plus ").replace("%", "pct")).strip("-")
    return folder if seed == 0 else f"{folder}-seed{seed}"


SIDES = (("pretrained: embeddings", "bert-embeddings"), ("pretrained: embeddings + MLM", "bert"),
         ("from scratch", None))
"""The models fine-tuned: stage 1 of pretraining alone, stages 1 and 2, and random weights."""


def finetune_sentiment(data: Path, out: Path, models: dict[str, Path], wordpiece: Path,
                       scale: float) -> dict[str, list[float]]:
    """Dev accuracy of every run, by setting name (one per seed). `models`: the folder of each of
    SIDES' pretrained models."""
    from plmkit.recipes.finetune import finetune

    _banner("4. fine-tuning for sentiment (SST-2 sample): pretrained vs from scratch")
    common: dict[str, Any] = dict(train_file=str(data / "sst2-train.tsv"), dev_file=str(data / "sst2-dev.tsv"),
                                  max_length=64, tokenizer=str(wordpiece), model_overrides={"dropout": 0.1})
    train: dict[str, Any] = {}
    if scale != 1.0:  # at full scale plmkit chooses lr, batch, epochs and warmup for the model and data
        train = {"max_steps": max(20, int(300 * scale)), "save_every": 0}
    accuracy: dict[str, list[float]] = {}
    for fraction in LABEL_FRACTIONS:
        for side, model in SIDES:
            name = run_name(side, fraction)
            for seed in SEEDS if fraction < 1.0 else SEEDS[:1]:
                print(f"-- {name}, seed {seed}", flush=True)
                result = finetune("classification", model=str(models[model or "bert"]),
                                  out=str(out / run_folder(name, seed)), from_scratch=model is None,
                                  train_fraction=fraction, train={**train, "seed": seed}, **common)
                accuracy.setdefault(name, []).append(result.dev_metrics.get("accuracy", float("nan")))
                print(f"dev accuracy ({name}, seed {seed}): {accuracy[name][-1]:.3f}")
    return accuracy


def nearest_words(folder: Path, words: tuple[str, ...], k: int = 5) -> dict[str, str]:
    """The `k` whole words nearest to each of `words` (cosine of the model's token embeddings)."""
    import plmkit

    table = plmkit.load(folder).transformer.emb.tok.weight.detach().float()
    table = table / table.norm(dim=1, keepdim=True).clamp_min(1e-12)
    tokenizer = Tokenizer.load(folder)
    special = set(tokenizer.all_special_ids)
    found = {}
    for word in words:
        index = tokenizer.token_to_id(word)
        if index is None:
            continue
        near = []
        for other in (table @ table[index]).argsort(descending=True).tolist():
            token = tokenizer.id_to_token(other)
            if other != index and other not in special and token and token.isalpha():
                near.append(token)
            if len(near) == k:
                break
        found[word] = ", ".join(near)
    return found


def show_generation(gpt_dir: Path, bert_dir: Path, embeddings_dir: Path) -> dict[str, list[dict[str, str]]]:
    """Print (and return, for the report) the embeddings' nearest words, the BERT's fill-mask
    answers and the GPT's generations."""
    import plmkit

    _banner("5. samples: generation, nearest words, fill-mask")
    samples: dict[str, list[dict[str, str]]] = {"generation": [], "fill-mask": [], "nearest words": []}
    generator = plmkit.pipeline("text-generation", str(gpt_dir))
    for prompt in ("ROMEO:", "First Citizen:\nWe"):
        result = generator(prompt, max_new_tokens=60, top_p=0.9, temperature=0.8, seed=0)
        print(f"--- prompt {prompt!r}\n{result['generated_text']}")
        samples["generation"].append({"input": prompt, "output": result["generated_text"]})
    neighbours = nearest_words(embeddings_dir, ("good", "bad", "funny", "boring", "king"))
    for word, near in neighbours.items():
        print(f"nearest to {word!r}: {near}")
        samples["nearest words"].append({"input": word, "output": near})
    fill = plmkit.pipeline("fill-mask", str(bert_dir))
    for text in ("the king of [MASK] .", "the film was [MASK] ."):
        candidates = fill(text)["masks"][0]["candidates"]
        answer = ", ".join(f"{c['token_str']} ({c['score']:.2f})" for c in candidates)
        print(f"fill-mask {text!r}: {answer}")
        samples["fill-mask"].append({"input": text, "output": answer})
    return samples


def run_demo(out: Path, data: Path | None = None, scale: float = 1.0) -> dict:
    """Run every step; `scale` multiplies the step counts (0.1 for a smoke run). `data`: the
    samples' folder (default: those shipped with the package)."""
    from plmkit.recipes.finetune import recipe

    data = bundled_data() if data is None else Path(data)
    check_data(data)
    recipe("classification").check_requirements()  # before minutes of pretraining, not after
    started = time.perf_counter()
    with claim_output(out, DEMO, inputs=[data], replace=True) as claim:  # a demo folder plmkit made, or new
        claim.clear()
        return _run_steps(out, data, scale, started)


class _Stopwatch:
    """Seconds per stage, in order, for the report."""

    def __init__(self) -> None:
        self.stages: list[dict[str, Any]] = []
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages.append({"stage": stage, "seconds": now - self._last})
        self._last = now


def _run_steps(out: Path, data: Path, scale: float, started: float) -> dict:
    watch = _Stopwatch()
    wordpiece, bpe = train_tokenizers(data, out)
    watch.lap("tokenizers")
    runs = pretrain_models(data, out, wordpiece, bpe, scale)
    watch.lap("token shards and pretraining")
    bert, gpt = model_dir(runs["bert"].out_dir), model_dir(runs["gpt"].out_dir)  # best/ (lowest held-out loss)
    models = {"bert-embeddings": runs["bert-embeddings"], "bert": bert}
    runs_accuracy = finetune_sentiment(data, out, models, wordpiece, scale)
    accuracy = {name: sum(values) / len(values) for name, values in runs_accuracy.items()}
    watch.lap("fine-tuning (pretrained and from scratch)")
    samples = show_generation(gpt, bert, runs["bert-embeddings"])
    watch.lap("generation and fill-mask")
    # the evaluations of the models fine-tuned and sampled: best/'s record
    bert_eval, gpt_eval = (read_best(runs[name].out_dir / BEST_DIR)["metrics"] for name in ("bert", "gpt"))
    summary = {
        "bert_heldout_mlm_loss": bert_eval["eval_loss"], "unigram_baseline_loss": runs["unigram"],
        "bert_mlm_accuracy": bert_eval.get("mlm_accuracy"),
        "gpt_heldout_perplexity": math.exp(gpt_eval["eval_loss"]),
        "sst2_dev_accuracy": accuracy, "sst2_dev_accuracy_per_seed": runs_accuracy,
        "minutes": (time.perf_counter() - started) / 60,
        "loss_curves": [str(runs["bert"].out_dir / "loss.png"), str(runs["gpt"].out_dir / "loss.png")],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    _banner("summary")
    print(f"BERT held-out MLM loss  {summary['bert_heldout_mlm_loss']:.3f}  "
          f"(unigram baseline {summary['unigram_baseline_loss']:.3f})")
    if summary["bert_heldout_mlm_loss"] > summary["unigram_baseline_loss"]:
        print("  above the baseline after this few steps: the model predicts no better than word frequencies\n"
              "  yet (its output bias starts at them; longer runs go under it)")
    print(f"GPT held-out perplexity {summary['gpt_heldout_perplexity']:.1f}")
    for fraction in LABEL_FRACTIONS:
        seeds = f", mean of {len(SEEDS)} seeds" if fraction < 1.0 else ""
        print(f"SST-2 dev accuracy, {fraction:.0%} of labels{seeds}:")
        scratch = accuracy[run_name("from scratch", fraction)]
        for side, _ in SIDES:
            value = accuracy[run_name(side, fraction)]
            gain = f"  ({100 * (value - scratch):+.1f} points)" if side != "from scratch" else ""
            print(f"  {side:<30} {value:.3f}{gain}")
    print(f"loss curves: {', '.join(summary['loss_curves'])}")
    print(f"total {summary['minutes']:.1f} min; everything is in {out}/")
    report = write_html_report(out / "report.html", report_data(out, runs, accuracy, samples, watch.stages, summary))
    summary["report"] = str(report)
    print(f"report: {report}")
    return summary


def report_data(out: Path, runs: dict, accuracy: dict[str, float], samples: dict[str, list[dict[str, str]]],
                timings: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """The demo's report (`plmkit.recipes.report`) as plain data."""
    curves = [{"title": "BERT pretraining (masked LM, after co-occurrence embeddings)", "metrics": runs["bert"].out_dir / METRICS_FILE},
              {"title": "GPT pretraining (next token)", "metrics": runs["gpt"].out_dir / METRICS_FILE}]
    for name in accuracy:
        folder = out / run_folder(name)
        if (folder / METRICS_FILE).is_file():
            curves.append({"title": f"SST-2 fine-tuning, {name}", "metrics": folder / METRICS_FILE})
    return {
        "title": "plmkit demo",
        "subtitle": f"pretraining, fine-tuning and generation on the bundled samples; {summary['minutes']:.1f} min",
        "headline": [{"label": f"SST-2 dev accuracy, {name}", "value": round(value, 4)}
                     for name, value in accuracy.items()]
        + [{"label": "BERT held-out MLM loss", "value": round(summary["bert_heldout_mlm_loss"], 4)},
           {"label": "GPT held-out perplexity", "value": round(summary["gpt_heldout_perplexity"], 2)}],
        "comparison": {"title": "SST-2 dev accuracy: pretrained vs from scratch", "metric": "accuracy",
                       "caption": ("the same model shape, data and fine-tuning defaults, with and without the pretrained "
                                   f"weights; below 100% of the labels the mean of {len(SEEDS)} seeds"),
                       "bars": [{"name": name, "value": value} for name, value in accuracy.items()]},
        "curves": curves,
        "samples": [{"title": "Nearest words (BERT's co-occurrence embeddings)", "items": samples.get("nearest words", [])},
                    {"title": "Fill-mask (BERT)", "items": samples.get("fill-mask", [])},
                    {"title": "Generation (GPT)", "items": samples.get("generation", [])}],
        "timings": timings,
        "tables": [{"title": "Summary", "header": ["", "value"],
                    "rows": [[k, v] for k, v in summary.items() if isinstance(v, (int, float))]}],
    }


def cli_configure(parser: argparse.ArgumentParser) -> None:
    add_output(parser, "output folder: new, empty, or the folder of an earlier demo (replaced)", required=False,
               default="runs/demo")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help=f"folder with the samples ({', '.join(SAMPLES)}) (default: those shipped with plmkit)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count (0.1 = smoke run)")


def cli_run(args: argparse.Namespace) -> int:
    run_demo(Path(args.output), None if args.data is None else Path(args.data), args.scale)
    return 0
