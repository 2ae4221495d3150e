"""The fine-tuning run around the one loop: train, evaluate the dev set, keep the best model, and
write the run directory's files (`plmkit.rundir`)."""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from plmkit.config import ConfigError
from plmkit.data.tokenizer import Tokenizer
from plmkit.infer.batching import device_of, input_names, pad_id, progress
from plmkit.models import PretrainedModel, load
from plmkit.recipes.batches import FeatureBatches
from plmkit.recipes.best_checkpoint import BestCheckpoint
from plmkit.recipes.defaults import describe, with_defaults
from plmkit.recipes.tasks_base import EvalReport, FinetuneConfig
from plmkit.rundir import (
    BEST_DIR, DEV_PREDICTIONS, DEV_REPORT, RECIPE_FILE, recipe_record, write_recipe, write_report, write_rows,
)
from plmkit.train.checkpoint import resolve_resume
from plmkit.train.distributed import current_env
from plmkit.train.loop import TrainConfig, TrainResult, train
from plmkit.train.model_card import write_model_card

Evaluator = Callable[[PretrainedModel], EvalReport]

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced."""

    out_dir: Path
    final_dir: Path | None
    best_dir: Path | None
    """out/best, written when a dev evaluation improved the metric (None without dev data)."""
    metric: str | None
    best_value: float | None
    best_step: int | None
    dev_metrics: dict[str, float]
    """The best model's dev metrics (from out/dev_eval.json)."""
    train_features: int
    """Training rows (examples; QA: context windows; LM: token blocks)."""
    train: TrainResult
    extra: dict[str, Any] = field(default_factory=dict)
    """Task-specific results (e.g. perplexity before fine-tuning)."""


def resolved_train(cfg: FinetuneConfig, batches_per_epoch: int) -> TrainConfig:
    """cfg.train with max_steps from cfg.epochs and warmup_ratio from cfg.warmup_ratio (the same as
    train.warmup_ratio, which the loop turns into warmup steps)."""
    tcfg = cfg.train
    if cfg.epochs is not None:
        steps = math.ceil(cfg.epochs * batches_per_epoch / tcfg.grad_accum)
        tcfg = dataclasses.replace(tcfg, max_steps=max(1, steps, cfg.min_steps))
    if cfg.warmup_ratio is not None:
        tcfg = dataclasses.replace(tcfg, warmup_ratio=cfg.warmup_ratio)
    return tcfg


def run_info(task: str, cfg: FinetuneConfig, tcfg: TrainConfig, train_features: int,
             info: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the start block says of a fine-tuning run beyond the loop's own facts: the task, the
    model it starts from, how the steps were chosen, and what the recipe adds (`info`: labels, ...)."""
    chosen: dict[str, Any] = {"task": task,
                              "model": cfg.model + (" (fresh weights of its shape)" if cfg.from_scratch else "")}
    if cfg.auto:
        chosen["chosen for this model and data"] = describe(cfg) + " (give a value to override)"
    if cfg.epochs is not None:
        chosen["steps from"] = f"{cfg.epochs:g} epochs (at least {cfg.min_steps} steps)"
    if cfg.dev_file:
        every = f"every {tcfg.eval_every} steps and at the end" if tcfg.eval_every else "at the end"
        chosen["dev evaluation"] = f"{cfg.dev_file}, {every}"
    return {**chosen, **dict(info or {})}


def run_finetune(task: str, cfg: FinetuneConfig, model: PretrainedModel, tokenizer: Tokenizer,
                 train_features: Sequence[Mapping[str, Any]], evaluator: Evaluator | None,
                 metrics: Sequence[str], pipeline_options: Mapping[str, Any],
                 extra: dict[str, Any] | None = None, info: Mapping[str, Any] | None = None) -> FinetuneResult:
    """Train `model` on `train_features` with the one loop, evaluating the dev set through
    `evaluator`, keeping out/best and stopping early; then write the best model's dev report and
    the model cards of best/ and final/.

    `metrics` names the dev metrics the evaluator reports; the first is the default cfg.metric.
    `pipeline_options` (the task's inference settings) are recorded in finetune.json. cfg.resume
    is resolved here, once: the loop receives the checkpoint itself (or None). `info` is what the
    task adds to the start block (e.g. its examples per label).
    """
    metric = cfg.metric or metrics[0]
    if metric not in metrics:
        raise ConfigError(f"metric {metric!r} is not a {task} dev metric; choose from {', '.join(metrics)}")
    out = Path(cfg.out)
    resume_from = resolve_resume(out, cfg.resume)
    cfg = with_defaults(cfg, model.config.hidden_size, len(train_features))
    recipe = recipe_record(task, dataclasses.asdict(cfg), pipeline_options)
    main = current_env().is_main
    if main:
        if resume_from is None and (out / BEST_DIR / RECIPE_FILE).is_file():
            shutil.rmtree(out / BEST_DIR)  # the best model of an earlier run in this folder
        write_recipe(out, recipe)
    stream = FeatureBatches(train_features, cfg.train.batch_size, pad_id(tokenizer, model.config),
                            seed=cfg.train.seed, bucket=cfg.bucket, keys=input_names(model))
    tcfg = resolved_train(cfg, len(stream))
    keeper = (BestCheckpoint(model, tokenizer, out, metric, cfg.patience, recipe, resume_from is not None)
              if evaluator else None)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        with progress("dev evaluation", leave=False):
            return evaluator(m).metrics  # type: ignore[misc]

    inputs = [p for p in (cfg.train_file, cfg.dev_file) if p]
    result = train(model, stream, tcfg, out, eval_fn if evaluator else None, resume=resume_from,
                   callbacks=[keeper] if keeper else [], tokenizer=tokenizer,
                   info=run_info(task, cfg, tcfg, len(train_features), info), inputs=inputs)
    if result.final_dir is not None and main:
        write_recipe(result.final_dir, recipe)
    best_dir = out / BEST_DIR if keeper is not None and (out / BEST_DIR / RECIPE_FILE).is_file() else None
    dev_metrics: dict[str, float] = {}
    if evaluator is not None and main:
        best_model = load(best_dir) if best_dir is not None else model
        with progress("dev report", leave=False):
            report = evaluator(best_model.to(device_of(model)))
        write_report(out, DEV_REPORT, report.metrics, report.details, report.label_names,
                     title=f"{out.resolve().name}, dev set")
        write_rows(report.rows, out / DEV_PREDICTIONS)
        dev_metrics = report.metrics
    if main:
        for folder in (best_dir, result.final_dir):
            if folder is not None:
                write_model_card(folder)
    return FinetuneResult(out_dir=out, final_dir=result.final_dir, best_dir=best_dir,
                          metric=metric if keeper else None, best_value=keeper.best if keeper else None,
                          best_step=keeper.best_step if keeper else None, dev_metrics=dev_metrics,
                          train_features=len(train_features), train=result, extra=extra or {})


__all__ = ["Evaluator", "FinetuneResult", "resolved_train", "run_finetune", "run_info"]
