"""Fine-tuning for every downstream task: one typed function per task, all on the one loop.

    plmkit finetune classification --model runs/bert --train train.tsv --dev dev.tsv -o runs/sst2
    plmkit finetune ner --model runs/bert --train conll/train.txt --dev conll/dev.txt -o runs/ner
    plmkit finetune qa --model runs/bert --train squad.json --dev dev.json -o runs/qa --set language=zh
    plmkit finetune summarization --model seq2seq-small --tokenizer tok/ --train t.jsonl --dev d.jsonl -o runs/sum
    plmkit finetune translation --model runs/bert --warm-start --train multi30k/train --dev multi30k/val \\
        --set source_lang=en --set target_lang=de -o runs/mt
    plmkit finetune lm --model runs/gpt --train domain.txt --dev domain-dev.txt -o runs/gpt-domain

Each task's dataclass (`ClassificationConfig`, `NERConfig`, `QAConfig`, `Seq2SeqConfig`,
`LMConfig`) is its config schema: the same fields come from Python keywords, a YAML file
(``--config``) or ``--set key=value`` (``--set train.lr=3.0e-5``); an unknown key is an error
listing the valid ones. A run directory (its layout: `plmkit.rundir`) holds metrics.jsonl
(train loss and dev metrics), best/ (the best dev checkpoint), final/, dev_eval.json and
finetune.json, which `plmkit eval`, `plmkit predict` and `plmkit.pipeline` read back.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from plmkit.cli_args import add_output, add_set, add_text_column, column_value
from plmkit.config import ConfigError, apply_overrides, load_yaml
from plmkit.recipes.finetune_run import FinetuneResult
from plmkit.recipes.tasks_base import FinetuneConfig, Recipe
from plmkit.recipes.tasks_classification import RECIPE as CLASSIFICATION, ClassificationConfig, finetune_classification
from plmkit.recipes.tasks_lm import RECIPE as LM, LMConfig, finetune_lm
from plmkit.recipes.tasks_ner import RECIPE as NER, NERConfig, finetune_ner
from plmkit.recipes.tasks_qa import RECIPE as QA, QAConfig, finetune_qa
from plmkit.recipes.tasks_seq2seq import SUMMARIZATION, TRANSLATION, Seq2SeqConfig, finetune_seq2seq

RECIPES: dict[str, Recipe] = {r.name: r for r in (CLASSIFICATION, NER, QA, SUMMARIZATION, TRANSLATION, LM)}


def recipe(task: str) -> Recipe:
    """The recipe of a task name (classification, ner, qa, summarization, translation, lm)."""
    if task not in RECIPES:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[task]


def finetune(task: str, config: dict[str, Any] | FinetuneConfig | None = None, **fields: Any) -> FinetuneResult:
    """Fine-tune for `task` with the fields of its config dataclass (a missing metrics extra is
    reported before anything is trained)."""
    chosen = recipe(task)
    chosen.check_requirements()
    return chosen.finetune(config, **fields)


# --------------------------------------------------------------------------- command line


def cli_configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=list(RECIPES), help="the downstream task")
    parser.add_argument("--model", required=True,
                        help="model to start from: a local model folder (plmkit or Hugging Face), a training run "
                             "(its best/, else final/), or a preset name (from scratch, with --tokenizer)")
    parser.add_argument("--train", required=True, dest="train_file", metavar="FILE",
                        help="labelled training file in the task's format (.tsv .csv .jsonl .parquet, ...)")
    parser.add_argument("--dev", dest="dev_file", metavar="FILE",
                        help="labelled dev file: evaluated as training goes, picks best/, drives early stopping")
    add_output(parser, "run folder to write (new, empty, or a run to resume)")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the model's; required with a preset)")
    add_text_column(parser)
    parser.add_argument("--config", help="YAML file of config fields (`plmkit config TASK` lists them)")
    add_set(parser, "--set train.lr=3.0e-5 --set max_length=256 --set labels=negative,positive")
    parser.add_argument("--warm-start", action="store_true", default=None,
                        help="summarization / translation: start an encoder-decoder from an encoder checkpoint")
    parser.add_argument("--class-weights", action="store_true", default=None,
                        help="classification: weigh the loss by inverse class frequency")
    parser.add_argument("--patience", type=int, help="early stopping: stop after this many dev evaluations "
                                                     "without improvement (default: never stop early)")
    parser.add_argument("--epochs", type=float, help="passes over the training data (sets train.max_steps)")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="continue a run: auto (its newest checkpoint in -o) or a checkpoint folder")
    parser.add_argument("--adapt-steps", type=int, metavar="N",
                        help="task-adaptive pretraining: first continue pretraining the checkpoint for N steps on "
                             "the training texts (labels unused) and --adapt-file texts (sets adapt.steps)")
    parser.add_argument("--adapt-file", dest="adapt_files", action="append", default=[], metavar="FILE",
                        help="unlabelled in-domain text to adapt on as well (repeatable; sets adapt.files)")


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config dict of a `plmkit finetune` command line: YAML, then flags, then --set."""
    data: dict[str, Any] = load_yaml(args.config) if args.config else {}
    flags = ("model", "train_file", "dev_file", "tokenizer", "patience", "epochs", "resume")
    data.update({name: getattr(args, name) for name in flags if getattr(args, name) is not None})
    data["out"] = args.output
    if args.text_column is not None:
        field_name = recipe(args.task).text_column
        if field_name is None:
            raise ConfigError(f"--text-column: {args.task} files have a fixed layout, with no text column to name")
        data[field_name] = column_value(args.text_column)
    if args.warm_start:
        data["warm_start"] = True
    if args.class_weights:
        data["class_weights"] = True
    if args.task == "translation":
        data.setdefault("kind", "translation")
    if args.adapt_steps is not None or args.adapt_files:
        adapt = data.setdefault("adapt", {})
        if args.adapt_steps is not None:
            adapt["steps"] = args.adapt_steps
        adapt["files"] = [*adapt.get("files", []), *args.adapt_files]
    return apply_overrides(data, args.overrides)


def cli_run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = finetune(args.task, config_from_args(args))
    summary = {"out": str(result.out_dir), "best": None if result.best_dir is None else str(result.best_dir),
               "final": None if result.final_dir is None else str(result.final_dir), "metric": result.metric,
               "best_value": result.best_value, "best_step": result.best_step, "steps": result.train.step,
               "stopped_early": result.train.stopped_early, "dev_metrics": result.dev_metrics, **result.extra}
    print(json.dumps(summary, indent=2, default=str))
    return 0


__all__ = [
    "ClassificationConfig", "FinetuneConfig", "FinetuneResult", "LMConfig", "NERConfig", "QAConfig", "RECIPES",
    "Recipe", "Seq2SeqConfig", "finetune", "finetune_classification", "finetune_lm", "finetune_ner",
    "finetune_qa", "finetune_seq2seq", "recipe",
]
