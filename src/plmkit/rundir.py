"""The run directory: one place that knows its layout, finds the model in it, reads and writes it.

A fine-tuning run OUT (``plmkit finetune ... -o OUT``) holds::

    OUT/finetune.json           the task, its full config and the inference settings (RECIPE_FILE)
    OUT/best/                   the model with the best dev metric; its finetune.json adds "best"
    OUT/final/                  the model after the last step (the training loop's export)
    OUT/checkpoint-XXXXXXXX/    resumable training states (`plmkit.train.checkpoint`)
    OUT/metrics.jsonl           train loss and dev metrics per step (`plmkit.train.metrics_log`)
    OUT/run.json, OUT/loss.png  the loop's record of the run and its loss curve
    OUT/dev_eval.json           the best model's full dev report (+ dev_eval_confusion.png)
    OUT/dev_predictions.jsonl   its prediction of each dev example
    OUT/adapt/                  task-adaptive pretraining (`plmkit.recipes.adapt`)

A pretraining run has the same final/, checkpoints, metrics.jsonl and run.json, without the rest.
"Which model does this path mean" has one answer, `model_dir`: a run's best/, else its final/,
else the folder itself when it is a model directory (config.json). `plmkit.load`,
`plmkit.pipeline`, and the ``eval``, ``predict``, ``explain``, ``generate`` and ``serve``
commands all go through it. Every file here is written whole or not at all (`plmkit.files`).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plmkit.files import atomic_write, atomic_write_text

RECIPE_FILE = "finetune.json"
"""The task and config of a fine-tuning run, in the run folder and in each of its model folders."""
CONFIG_FILE = "config.json"
"""What makes a folder a model directory (Hugging Face's layout)."""
BEST_DIR = "best"
BEST_RECORD = "best.json"
"""In best/: which evaluation made it the best (metric, value, step, and all metrics of that evaluation)."""
FINAL_DIR = "final"
METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"
LOSS_PLOT = "loss.png"
DEV_REPORT = "dev_eval"
"""Name of the best model's dev report: dev_eval.json and dev_eval_confusion.png."""
DEV_PREDICTIONS = "dev_predictions.jsonl"
ROW_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
"""What `write_rows` writes: JSON Lines (.jsonl, .json) or a table (.csv, .tsv)."""


# --------------------------------------------------------------------------- finding the model


def is_model_dir(path: str | Path) -> bool:
    """Whether `path` is a model directory (holds config.json)."""
    return (Path(path) / CONFIG_FILE).is_file()


_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def hub_hint(name: str | Path) -> str:
    """For a path that does not exist and reads like a Hugging Face Hub id ("bert-base-uncased",
    "org/model"), the sentence that says plmkit reads local folders only; else ""."""
    text = str(name)
    path = Path(text)
    if path.exists() or not _HUB_NAME.fullmatch(text) or ("/" in text and path.parent.exists()):
        return ""
    return (f" {text!r} looks like a Hugging Face Hub name: plmkit reads models and tokenizers from local folders "
            f"only and cannot fetch from the Hub. Download it first (e.g. `huggingface-cli download {text} "
            f"--local-dir models/{path.name}`) and pass that folder")


def model_dir(path: str | Path) -> Path:
    """The model a path means: a run's best/, else its final/, else the folder itself (a model directory).

    Raises FileNotFoundError naming the places looked at.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such run or model directory (a model directory holds {CONFIG_FILE}; "
                                f"a run, {BEST_DIR}/ or {FINAL_DIR}/).{hub_hint(path)}")
    for candidate in (folder / BEST_DIR, folder / FINAL_DIR, folder):
        if is_model_dir(candidate):
            return candidate
    raise FileNotFoundError(f"{folder}: no {CONFIG_FILE} here nor in {folder / BEST_DIR} or {folder / FINAL_DIR} "
                            "(expected a model directory or a training run)")


def run_of(model_folder: str | Path) -> Path:
    """The run folder a model folder belongs to: the parent of best/ or final/, else the folder itself."""
    folder = Path(model_folder)
    return folder.parent if folder.name in (BEST_DIR, FINAL_DIR) else folder


# --------------------------------------------------------------------------- the recipe file


def read_recipe(path: str | Path, required: bool = False) -> dict[str, Any] | None:
    """finetune.json of a model or run folder, else of the run above it; None when there is none
    (a FileNotFoundError with `required`). A file that is not a JSON object is a ValueError."""
    folder = Path(path)
    for candidate in (folder, folder.parent):
        file = candidate / RECIPE_FILE
        if file.is_file():
            try:
                record = json.loads(file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{file}: not a valid recipe file: {e}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{file}: not a valid recipe file: expected a JSON object")
            return record
    if required:
        raise FileNotFoundError(f"{folder}: no {RECIPE_FILE} (not a plmkit fine-tuning run)")
    return None


def recipe_task(path: str | Path) -> str | None:
    """The fine-tuning task (classification, ner, ...) recorded for a model or run folder, if any."""
    record = read_recipe(path)
    task = record.get("task") if record else None
    return task if isinstance(task, str) else None


def pipeline_options(path: str | Path) -> dict[str, Any]:
    """The inference settings recorded for a model or run folder (the options its fine-tuning
    evaluated with: max_length, doc_stride, num_beams, ...); {} when none are recorded."""
    record = read_recipe(path)
    options = record.get("pipeline_options") if record else None
    return dict(options) if isinstance(options, dict) else {}


def recipe_record(task: str, config: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The content of finetune.json: the task, its config and the pipeline options it implies."""
    return {"task": task, "config": dict(config), "pipeline_options": dict(options)}


def write_recipe(folder: str | Path, record: Mapping[str, Any]) -> Path:
    """Write finetune.json into a run or model folder."""
    return write_json(Path(folder) / RECIPE_FILE, record)


# --------------------------------------------------------------------------- files


def write_json(path: str | Path, data: Any) -> Path:
    """`data` as indented UTF-8 JSON (anything else as its str()), written whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_rows(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Rows as JSON Lines (.jsonl/.json) or a CSV/TSV table (.csv/.tsv: list and dict values as JSON)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ROW_SUFFIXES:
        raise ValueError(f"{path}: output must end in .jsonl, .csv or .tsv")
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if suffix in (".jsonl", ".json"):
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                return
            columns = list(dict.fromkeys(key for row in rows for key in row))
            writer = csv.DictWriter(f, columns, delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
                                 for k, v in row.items()})

    return atomic_write(path, write)


def write_report(folder: str | Path, name: str, metrics: Mapping[str, float], details: Mapping[str, Any],
                 label_names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """FOLDER/NAME.json with metrics and details; for a classifier (details hold a
    "confusion_matrix" and `label_names` are known) also FOLDER/NAME_confusion.png, headed by
    `title` (default: the folder's name)."""
    folder = Path(folder)
    path = write_json(folder / f"{name}.json", {"metrics": dict(metrics), **details})
    matrix = details.get("confusion_matrix")
    if matrix is not None and label_names:
        import numpy as np

        from plmkit.metrics import plot_confusion_matrix

        plot_confusion_matrix(np.asarray(matrix), list(label_names), folder / f"{name}_confusion.png",
                              title=title or folder.resolve().name)
    return path


__all__ = [
    "BEST_DIR", "BEST_RECORD", "CONFIG_FILE", "DEV_PREDICTIONS", "DEV_REPORT", "FINAL_DIR", "LOSS_PLOT", "METRICS_FILE",
    "RECIPE_FILE", "RUN_FILE", "hub_hint", "is_model_dir", "model_dir", "pipeline_options", "read_recipe",
    "recipe_record",
    "recipe_task", "run_of", "write_json", "write_recipe", "write_report", "write_rows",
]
