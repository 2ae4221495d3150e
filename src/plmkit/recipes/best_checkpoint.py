"""Keep the best evaluated checkpoint of a run (OUT/best) and stop early: the best dev score of a
fine-tuning run, the lowest held-out loss of a pretraining run."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from plmkit.models import PretrainedModel
from plmkit.rundir import BEST_DIR, BEST_RECORD, read_recipe, write_json, write_recipe
from plmkit.train.distributed import current_env, export_pretrained
from plmkit.train.loop import StopTraining

log = logging.getLogger(__name__)

LOWER_IS_BETTER = ("loss", "perplexity")


def higher_is_better(metric: str) -> bool:
    return not any(metric == m or metric.endswith("_" + m) for m in LOWER_IS_BETTER)


class BestCheckpoint:
    """Loop callback: keep out/best for the best evaluated `metric`, stop after `patience` evaluations
    without improvement (raises `StopTraining`). Only the main process writes files.

    best/best.json records the evaluation that made it the best; a fine-tuning run also writes its
    `recipe` (finetune.json, with that record under "best") into best/."""

    def __init__(self, model: PretrainedModel, tokenizer: Any, out_dir: Path, metric: str,
                 patience: int | None, recipe: dict[str, Any] | None = None, resuming: bool = False) -> None:
        self.model, self.tokenizer, self.dir = model, tokenizer, out_dir / BEST_DIR
        self.metric, self.patience, self.recipe = metric, patience, recipe
        self.maximize = higher_is_better(metric)
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        previous = read_best(self.dir) if resuming else None
        if previous and previous.get("metric") == metric:
            self.best, self.best_step = previous["value"], previous["step"]

    def improved(self, value: float) -> bool:
        if self.best is None or math.isnan(self.best):
            return not math.isnan(value)
        return value > self.best if self.maximize else value < self.best

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        key = f"eval_{self.metric}"
        if key not in metrics:
            return
        value = metrics[key]
        if self.improved(value):  # every rank scores the same dev set, so all agree here
            self.best, self.best_step, self.bad_evals = value, step, 0
            self.save(step, value, {k.removeprefix("eval_"): v for k, v in metrics.items()
                                    if k.startswith("eval_")})
        else:
            self.bad_evals += 1
            if self.patience is not None and self.bad_evals >= self.patience:
                log.info("early stopping at step %d: %s has not improved for %d evaluations (best %.4f at "
                         "step %s)", step, self.metric, self.bad_evals, self.best, self.best_step)
                raise StopTraining

    def save(self, step: int, value: float, evaluation: dict[str, float]) -> None:
        """Export to best.tmp (gathering FSDP shards; all ranks take part), then swap it in."""
        tmp = self.dir.with_name(self.dir.name + ".tmp")
        env = current_env()
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        export_pretrained(self.model, tmp, env, self.tokenizer)
        if env.is_main:
            record = {"metric": self.metric, "value": value, "step": step}
            write_json(tmp / BEST_RECORD, {**record, "metrics": evaluation})
            if self.recipe is not None:
                write_recipe(tmp, {**self.recipe, "best": record})
            shutil.rmtree(self.dir, ignore_errors=True)
            os.replace(tmp, self.dir)


def read_best(folder: Path) -> dict[str, Any] | None:
    """The record of a best/ folder (metric, value, step, metrics): its best.json, else the "best" of
    its finetune.json (runs written before best.json); None when there is none."""
    try:
        record = json.loads((folder / BEST_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recipe = read_recipe(folder) if folder.is_dir() else None
        record = recipe.get("best") if recipe else None
    return record if isinstance(record, dict) and {"metric", "value", "step"} <= record.keys() else None


__all__ = ["BestCheckpoint", "LOWER_IS_BETTER", "higher_is_better", "read_best"]
