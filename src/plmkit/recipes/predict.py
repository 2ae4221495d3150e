"""`plmkit predict RUN_DIR --data FILE -o preds.jsonl|csv|tsv`: batch inference for every task.

The input file has the task's training format; references (labels, tags, answers, targets)
may be absent. Each output row holds the input, the prediction (and score where there is
one) and the reference when the file had it:

=============== ==========================================================
classification  text, [pair], label, score, [reference]
ner             words, tags, [reference]
qa              id, question, answer, [references]
summarization   source, prediction, [references]   (translation the same)
lm              where, tokens, loss, perplexity     (one row per document)
=============== ==========================================================

In CSV/TSV output, list values are written as JSON. QA input is SQuAD-format JSON whose
questions each have an "answers" list (empty when unknown). Predictions come from the task's
pipeline with the run's settings, as `plmkit.pipeline` on the run gives them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from plmkit.cli_args import add_device, add_output, add_set, add_text_column, column_value
from plmkit.infer.batching import progress
from plmkit.outputs import check_output_file
from plmkit.recipes.evaluate import load_run
from plmkit.recipes.finetune import RECIPES
from plmkit.recipes.tasks_base import EvalReport
from plmkit.rundir import write_rows


def predict_run(run_dir: str | Path, data: str | Path, out: str | Path, *, task: str | None = None,
                overrides: Sequence[str] = (), device: str | None = None,
                text_column: str | int | None = None) -> EvalReport:
    """Predict every example of `data` with the run's model and write the rows to `out`."""
    check_output_file(out, inputs=[data])
    chosen, cfg, model, tokenizer = load_run(run_dir, task=task, overrides=overrides, device=device,
                                             text_column=text_column)
    examples = chosen.read(cfg, str(data), False)
    with progress(f"predict {Path(data).name}"):
        report = chosen.evaluate(model, tokenizer, cfg, examples)
    write_rows(report.rows, out)
    return report


def cli_configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="fine-tuning run (its best/, else final/, model) or model folder")
    parser.add_argument("--data", required=True, metavar="FILE",
                        help="input file: the task's format, references optional; for classification also a "
                             ".txt file of one text per line")
    add_output(parser, "predictions file: .jsonl, .csv or .tsv (replaced if it exists; never the --data file)",
               metavar="FILE")
    add_text_column(parser, help="column of the text in --data (default: the run's setting, else found by "
                                 "its name: text, sentence, content, review, ...)")
    parser.add_argument("--task", choices=list(RECIPES), help="task, when the folder has no finetune.json "
                                                              "(default: from the model's head)")
    add_set(parser, "--set max_length=256", "data setting")
    add_device(parser)


def cli_run(args: argparse.Namespace) -> int:
    report = predict_run(args.run_dir, args.data, args.output, task=args.task, overrides=args.overrides,
                         device=args.device, text_column=column_value(args.text_column))
    print(f"wrote {len(report.rows)} predictions to {args.output}")
    if report.metrics:
        print(json.dumps(report.metrics, indent=2))
    return 0
