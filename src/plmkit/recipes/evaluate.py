"""`plmkit eval RUN_DIR --data FILE`: score a fine-tuned model on a labelled file.

The task and its data settings (columns, max_length, language, ...) come from the run's
finetune.json; the model is the one `plmkit.rundir.model_dir` picks (RUN_DIR/best, else
RUN_DIR/final, else RUN_DIR itself: any checkpoint directory with a task head, whose task is
then inferred from the head, or given with --task). ``--set key=value`` changes a setting (e.g.
a column name) for this file. Predictions come from the task's pipeline with the run's
settings: the same as `plmkit.pipeline` on the run gives.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from plmkit.cli_args import add_device, add_output, add_set, add_text_column, column_value
from plmkit.config import ConfigError, apply_overrides
from plmkit.data.tokenizer import Tokenizer
from plmkit.heads import default_recipe
from plmkit.infer.batching import progress
from plmkit.models import PretrainedModel, load
from plmkit.outputs import check_output_file
from plmkit.recipes.finetune import RECIPES, recipe
from plmkit.recipes.tasks_base import EvalReport, FinetuneConfig, Recipe, parse_config
from plmkit.rundir import model_dir, read_recipe, write_report


def task_of(model: PretrainedModel, record: dict[str, Any] | None, task: str | None) -> Recipe:
    """The recipe named by `task`, else by the run's finetune.json, else by the model's head."""
    if task is not None:
        return recipe(task)
    if record is not None and isinstance(record.get("task"), str):
        return recipe(record["task"])
    name = default_recipe(model.task)
    if name is None:
        raise ValueError(f"cannot tell the task of a model with a {model.task} head; pass --task "
                         f"({', '.join(RECIPES)})")
    return recipe(name)


def load_run(run_dir: str | Path, *, task: str | None = None, overrides: Sequence[str] = (),
             device: str | None = None, text_column: str | int | None = None,
             ) -> tuple[Recipe, FinetuneConfig, PretrainedModel, Tokenizer]:
    """(recipe, config, model, tokenizer) of a run or model directory, the model on `device`
    (default: cuda when available); `text_column` names the text column of the files to read."""
    folder = model_dir(run_dir)
    record = read_recipe(folder)
    model = load(folder)
    chosen = task_of(model, record, task)
    data = dict(record["config"]) if record and record.get("task") == chosen.name else {}
    data.update(model=str(folder), train_file=data.get("train_file", ""), out=data.get("out", str(run_dir)))
    if chosen.name == "translation":
        data.setdefault("kind", "translation")
    if text_column is not None:
        if chosen.text_column is None:
            raise ConfigError(f"--text-column: {chosen.name} files have a fixed layout, with no text column to name")
        data[chosen.text_column] = text_column
    cfg = parse_config(chosen.config, apply_overrides(data, list(overrides)))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return chosen, cfg, model.to(device).eval(), Tokenizer.load(folder)


def evaluate_run(run_dir: str | Path, data: str | Path, *, task: str | None = None, overrides: Sequence[str] = (),
                 device: str | None = None, text_column: str | int | None = None) -> EvalReport:
    """Score the run's model on a labelled file of its task; metrics in ``report.metrics``."""
    chosen, cfg, model, tokenizer = load_run(run_dir, task=task, overrides=overrides, device=device,
                                             text_column=text_column)
    chosen.check_requirements()
    examples = chosen.read(cfg, str(data), True)
    with progress(f"eval {Path(data).name}"):
        report = chosen.evaluate(model, tokenizer, cfg, examples)
    if not report.metrics:
        raise ValueError(f"{data}: no references to score against")
    return report


def cli_configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="fine-tuning run (its best/, else final/, model) or model folder")
    parser.add_argument("--data", required=True, metavar="FILE",
                        help="labelled file in the task's format (the layout of the run's training file)")
    add_text_column(parser, help="column of the text in --data (default: the run's setting, else found by "
                                 "its name: text, sentence, content, review, ...)")
    parser.add_argument("--task", choices=list(RECIPES), help="task, when the folder has no finetune.json "
                                                              "(default: from the model's head)")
    add_set(parser, "--set label_column=stars", "data setting")
    add_device(parser)
    add_output(parser, "write the report (metrics and details) to NAME.json, replaced if it exists "
                       "(classification also writes NAME_confusion.png beside it)", required=False,
               metavar="NAME.json")


def cli_run(args: argparse.Namespace) -> int:
    if args.output:  # the report never replaces the --data file
        check_output_file(Path(args.output).with_suffix(".json"), [args.data])
    report = evaluate_run(args.run_dir, args.data, task=args.task, overrides=args.overrides, device=args.device,
                          text_column=column_value(args.text_column))
    if args.output:
        out = Path(args.output)
        write_report(out.parent, out.stem, report.metrics, report.details, report.label_names,
                     title=f"{Path(args.run_dir).name} on {Path(args.data).name}")
    print(json.dumps(report.metrics, indent=2))
    return 0
