"""What every fine-tuning recipe shares: the common config, model and tokenizer loading, the
best-checkpoint / early-stopping callback, batched inference, and the run around the one loop.

A run directory OUT holds what `plmkit.train.loop.train` writes (metrics.jsonl with the dev
metrics, checkpoints, final/, run.json, loss.png), plus:

    OUT/finetune.json   the task and its full config (read back by `plmkit eval` / `predict`)
    OUT/best/           the model with the best dev metric (save_pretrained + tokenizer)
    OUT/dev_eval.json   the best model's full dev report (per-class scores, ...)
    OUT/dev_predictions.jsonl  its prediction for each dev example
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from plmkit.config import ConfigError, ModelConfig, from_dict, load_yaml, preset_names
from plmkit.data.tokenizer import Tokenizer
from plmkit.models import PretrainedModel, build_model, load, read_config
from plmkit.recipes.adapt import AdaptConfig, adapted_model
from plmkit.recipes.batches import FeatureBatches, forward_keys, sorted_batches
from plmkit.train.checkpoint import resolve_resume
from plmkit.train.distributed import export_pretrained, init_distributed
from plmkit.train.loop import StopTraining, TrainConfig, TrainResult, train

log = logging.getLogger(__name__)

RECIPE_FILE = "finetune.json"
BEST_DIR = "best"
LOWER_IS_BETTER = ("loss", "perplexity")
C = TypeVar("C", bound="FinetuneConfig")


def default_train() -> TrainConfig:
    """The `train:` section's defaults for fine-tuning (BERT-paper learning rate, dev eval every 200 steps)."""
    return TrainConfig(lr=5e-5, warmup_steps=0, max_steps=1000, batch_size=32, eval_every=200, save_every=500,
                       log_every=10)


@dataclass
class FinetuneConfig:
    """Fields every task shares. `--set key=value` on the command line sets any of them."""

    model: str
    """A checkpoint directory (plmkit or Hugging Face) or a preset name / YAML file (from scratch)."""
    train_file: str
    """Training data (the task's format)."""
    out: str
    """Run directory."""
    dev_file: str | None = None
    """Dev data: evaluated every train.eval_every steps, for early stopping and the best checkpoint."""
    tokenizer: str | None = None
    """Tokenizer directory or file; defaults to the model directory's (required for a preset)."""
    from_scratch: bool = False
    """With a checkpoint directory: build a fresh model of its shape instead of loading its weights."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields to change, e.g. {dropout: 0.0} (for a preset: any shape field)."""
    epochs: float | None = None
    """Train for this many passes over the training data (sets train.max_steps)."""
    min_steps: int = 0
    """With epochs: train at least this many steps (small data sets)."""
    warmup_ratio: float | None = None
    """Warm up over this fraction of train.max_steps (sets train.warmup_steps)."""
    metric: str | None = None
    """Dev metric that picks the best checkpoint and drives early stopping (default: the task's)."""
    patience: int | None = None
    """Stop after this many dev evaluations without improvement of `metric`; None = never."""
    max_train_examples: int | None = None
    """Use only the first N training examples."""
    max_dev_examples: int | None = None
    """Use only the first N dev examples."""
    train_fraction: float = 1.0
    """Train on this random fraction of the training examples (drawn with train.seed)."""
    eval_batch_size: int = 64
    """Examples per batch at evaluation and prediction."""
    bucket: int = 0
    """Length bucketing of training batches: sort within windows of this many batches (0 = off)."""
    resume: str | None = None
    """"auto" (newest checkpoint in out, if any) or a checkpoint path."""
    train: TrainConfig = field(default_factory=default_train)
    """The training loop's settings (train.lr, train.max_steps, train.batch_size, ...)."""
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    """Task-adaptive pretraining on the training texts before fine-tuning (adapt.steps > 0; see
    plmkit.recipes.adapt)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.train_fraction <= 1.0:
            raise ConfigError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 or null, got {self.patience}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")
        if self.warmup_ratio is not None and not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be positive, got {self.eval_batch_size}")


def parse_config(cls: type[C], data: Mapping[str, Any] | C | None = None, **fields: Any) -> C:
    """Build task config `cls` from a dict and/or keyword fields; unknown keys are ConfigError.

    A partial ``train`` mapping is laid over the fine-tuning defaults (`default_train`).
    """
    if isinstance(data, cls):
        if fields:
            raise ConfigError(f"pass either a {cls.__name__} or fields, not both")
        return data
    merged = {**dict(data or {}), **fields}
    train_section = merged.get("train", {})
    if isinstance(train_section, TrainConfig):
        train_section = dataclasses.asdict(train_section)
    if not isinstance(train_section, Mapping):
        raise ConfigError(f"train: expected a mapping of loop settings, got {train_section!r}")
    merged["train"] = {**dataclasses.asdict(default_train()), **train_section}
    return from_dict(cls, merged)


# --------------------------------------------------------------------------- results


@dataclass
class EvalReport:
    """One pass of a model over a task file."""

    metrics: dict[str, float]
    """Scalar scores (empty when the data has no labels)."""
    rows: list[dict[str, Any]]
    """One prediction record per example (with its reference when known)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Anything else JSON-able: per-class / per-type scores, the confusion matrix, ..."""
    label_names: list[str] | None = None
    """Class names, when details hold a "confusion_matrix" to draw."""


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


# --------------------------------------------------------------------------- model and tokenizer


def load_tokenizer(cfg: FinetuneConfig) -> Tokenizer:
    """cfg.tokenizer, else the tokenizer files of the model directory."""
    source = cfg.tokenizer
    if source is None:
        if not Path(cfg.model).is_dir():
            raise ValueError(f"--model {cfg.model!r} is a preset (a model from scratch): pass --tokenizer DIR")
        source = cfg.model
    try:
        return Tokenizer.load(source)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no tokenizer in {source} ({e}); pass --tokenizer DIR") from None


def special_ids(tokenizer: Tokenizer) -> dict[str, int | None]:
    """Model config ids matching a tokenizer: pad, bos (else [CLS]), eos (else [SEP])."""
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.cls_id
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.sep_id
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else eos
    return {"pad_token_id": pad if pad is not None else 0, "bos_token_id": bos, "eos_token_id": eos}


def scratch_config(cfg: FinetuneConfig, tokenizer: Tokenizer, changes: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig of a preset / YAML file / checkpoint directory, sized to the tokenizer."""
    source = Path(cfg.model)
    if source.is_dir():
        base = read_config(source)[0].to_dict()
    else:
        if source.suffix not in (".yaml", ".yml") and cfg.model not in preset_names():
            raise FileNotFoundError(f"--model {cfg.model!r}: no such checkpoint directory, and not a preset "
                                    f"({', '.join(preset_names())})")
        data = load_yaml(cfg.model)
        base = from_dict(ModelConfig, data.get("model", data), "model").to_dict()
    ids = special_ids(tokenizer)
    base.update(vocab_size=tokenizer.vocab_size, **ids)
    if base["arch"] == "encoder-decoder":
        base["decoder_start_token_id"] = ids["bos_token_id"]
    return from_dict(ModelConfig, {**base, **cfg.model_overrides, **changes}, "model")


def load_model(cfg: FinetuneConfig, head: str, tokenizer: Tokenizer, adapt_texts: Iterable[str] | None = None,
               **changes: Any) -> PretrainedModel:
    """The model to fine-tune with head `head`: loaded from a checkpoint (new head starts fresh)
    or built from a preset; `changes` are ModelConfig fields the task needs (labels). With
    cfg.adapt.steps, the checkpoint is first adapted on `adapt_texts` (the task's unlabelled
    training texts). New weights are drawn after seeding torch with train.seed, so a run is repeatable."""
    if cfg.adapt.steps:
        if adapt_texts is None:
            raise ConfigError("task-adaptive pretraining (adapt.steps) is available for classification, ner and qa")
        cfg = adapted_model(cfg, adapt_texts)
    torch.manual_seed(cfg.train.seed)
    path = Path(cfg.model)
    if not path.is_dir() or cfg.from_scratch:
        model = build_model(scratch_config(cfg, tokenizer, changes), head)
    else:
        model = _load_checkpoint(path, head, {**cfg.model_overrides, **changes})
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary only "
                         f"{model.config.vocab_size}: use the tokenizer the model was trained with")
    return model


def _load_checkpoint(path: Path, head: str, overrides: dict[str, Any]) -> PretrainedModel:
    """plmkit.load with a head; a checkpoint with this very head but other labels keeps its
    backbone and gets a fresh head of the new size."""
    saved, saved_task = read_config(path)
    relabel = saved_task == head and "id2label" in overrides and saved.id2label != overrides["id2label"]
    if not relabel:
        return load(path, task=head, **overrides)
    old = load(path)
    model = build_model(from_dict(ModelConfig, {**old.config.to_dict(), **overrides}, "model"), head)
    own = model.state_dict()
    kept = {k: v for k, v in old.state_dict().items() if k in own and own[k].shape == v.shape
            and not k.startswith(("classifier.", "score."))}
    model.load_state_dict(kept, strict=False)
    model.tie_weights()
    return model


def position_limit(model: PretrainedModel) -> int:
    """Most tokens one row may hold."""
    return model.config.max_positions - model.config.position_offset


def pad_id_of(tokenizer: Tokenizer, model: PretrainedModel) -> int:
    return int(tokenizer.pad_id) if tokenizer.pad_id is not None else int(model.config.pad_token_id)


def subsample(examples: list[Any], limit: int | None, fraction: float = 1.0, seed: int = 0) -> list[Any]:
    """The first `limit` examples, then a random `fraction` of them (at least one), in file order."""
    if limit is not None:
        examples = examples[:limit]
    if fraction < 1.0 and examples:
        count = max(1, round(fraction * len(examples)))
        keep = np.sort(np.random.default_rng([seed, 0xC0DE]).choice(len(examples), count, replace=False))
        examples = [examples[i] for i in keep]
    return examples


# --------------------------------------------------------------------------- inference


def run_batches(model: nn.Module, features: Sequence[Mapping[str, Any]], batch_size: int, pad_id: int,
                per_batch: Callable[[Any, dict[str, torch.Tensor]], Sequence[Any]]) -> list[Any]:
    """Run `model` over all features in length-sorted batches; returns one output per feature,
    in the given order. ``per_batch(model_output, batch)`` splits a batch's output into rows."""
    outputs: list[Any] = [None] * len(features)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for indices, batch in sorted_batches(features, batch_size, pad_id, forward_keys(model)):
                batch = {k: v.to(device) for k, v in batch.items()}
                for i, row in zip(indices, per_batch(model(**batch), batch)):
                    outputs[i] = row
    finally:
        model.train(was_training)
    return outputs


def mean_loss(model: nn.Module, features: Sequence[Mapping[str, Any]], batch_size: int, pad_id: int) -> float:
    """Mean loss over all label positions of `features` (weighted by each batch's n_targets)."""
    totals: list[tuple[float, float]] = []

    def per_batch(out: Any, batch: dict[str, torch.Tensor]) -> list[None]:
        n = float(out.n_targets) if out.n_targets is not None else float(batch["input_ids"].size(0))
        totals.append((float(out.loss) * n, n))
        return [None] * batch["input_ids"].size(0)

    run_batches(model, features, batch_size, pad_id, per_batch)
    count = sum(n for _, n in totals)
    return sum(s for s, _ in totals) / count if count else math.nan


# --------------------------------------------------------------------------- best checkpoint


def higher_is_better(metric: str) -> bool:
    return not any(metric == m or metric.endswith("_" + m) for m in LOWER_IS_BETTER)


class BestCheckpoint:
    """Loop callback: keep out/best for the best dev `metric`, stop after `patience` evaluations
    without improvement (raises `StopTraining`). Only rank 0 writes files."""

    def __init__(self, model: PretrainedModel, tokenizer: Tokenizer, out_dir: Path, metric: str,
                 patience: int | None, recipe: dict[str, Any], resuming: bool = False) -> None:
        self.model, self.tokenizer, self.dir = model, tokenizer, out_dir / BEST_DIR
        self.metric, self.patience, self.recipe = metric, patience, recipe
        self.maximize = higher_is_better(metric)
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        previous = read_recipe(self.dir, required=False) if resuming else None
        if previous and previous.get("best", {}).get("metric") == metric:
            self.best, self.best_step = previous["best"]["value"], previous["best"]["step"]

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
            self.save(step, value)
        else:
            self.bad_evals += 1
            if self.patience is not None and self.bad_evals >= self.patience:
                log.info("early stopping at step %d: %s has not improved for %d evaluations (best %.4f at "
                         "step %s)", step, self.metric, self.bad_evals, self.best, self.best_step)
                raise StopTraining

    def save(self, step: int, value: float) -> None:
        """Export to best.tmp (gathering FSDP shards; all ranks take part), then swap it in."""
        tmp = self.dir.with_name(self.dir.name + ".tmp")
        env = init_distributed()
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        export_pretrained(self.model, tmp, env, self.tokenizer)
        if env.is_main:
            write_recipe(tmp, {**self.recipe, "best": {"metric": self.metric, "value": value, "step": step}})
            shutil.rmtree(self.dir, ignore_errors=True)
            os.replace(tmp, self.dir)


def _is_main() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# --------------------------------------------------------------------------- run files


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Rows as JSON Lines (.jsonl/.json) or CSV/TSV (.csv/.tsv); written then renamed."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        raise ValueError(f"{path}: output must end in .jsonl, .csv or .tsv")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        if suffix in (".jsonl", ".json"):
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            columns = list(dict.fromkeys(key for row in rows for key in row))
            writer = csv.DictWriter(f, columns, delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
                                 for k, v in row.items()})
    os.replace(tmp, path)
    return path


def write_recipe(directory: Path, recipe: dict[str, Any]) -> Path:
    return write_json(directory / RECIPE_FILE, recipe)


def read_recipe(directory: str | Path, required: bool = True) -> dict[str, Any] | None:
    """finetune.json of a run or model directory (or of its parent run), else None / an error."""
    for folder in (Path(directory), Path(directory).parent):
        path = folder / RECIPE_FILE
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON: {e}") from None
    if required:
        raise FileNotFoundError(f"{directory}: no {RECIPE_FILE} (not a plmkit fine-tuning run)")
    return None


def recipe_record(task: str, cfg: FinetuneConfig) -> dict[str, Any]:
    return {"task": task, "config": dataclasses.asdict(cfg)}


# --------------------------------------------------------------------------- the run


def resolved_train(cfg: FinetuneConfig, batches_per_epoch: int) -> TrainConfig:
    """cfg.train with max_steps from cfg.epochs and warmup_steps from cfg.warmup_ratio."""
    tcfg = cfg.train
    if cfg.epochs is not None:
        steps = math.ceil(cfg.epochs * batches_per_epoch / tcfg.grad_accum)
        tcfg = dataclasses.replace(tcfg, max_steps=max(1, steps, cfg.min_steps))
    if cfg.warmup_ratio is not None:
        tcfg = dataclasses.replace(tcfg, warmup_steps=round(cfg.warmup_ratio * tcfg.max_steps))
    return tcfg


Evaluator = Callable[[PretrainedModel], EvalReport]


def run_finetune(task: str, cfg: FinetuneConfig, model: PretrainedModel, tokenizer: Tokenizer,
                 train_features: Sequence[Mapping[str, Any]], evaluator: Evaluator | None,
                 metrics: Sequence[str], extra: dict[str, Any] | None = None) -> FinetuneResult:
    """Train `model` on `train_features` with the one loop, evaluating the dev set through
    `evaluator`, keeping out/best and stopping early; then write the best model's dev report.

    `metrics` names the dev metrics the evaluator reports; the first is the default cfg.metric.
    """
    metric = cfg.metric or metrics[0]
    if metric not in metrics:
        raise ConfigError(f"metric {metric!r} is not a {task} dev metric; choose from {', '.join(metrics)}")
    out = Path(cfg.out)
    resuming = resolve_resume(out, cfg.resume) is not None
    recipe = recipe_record(task, cfg)
    if _is_main():
        if not resuming and (out / BEST_DIR).is_dir():
            shutil.rmtree(out / BEST_DIR)  # a best model of an earlier run in this folder
        write_recipe(out, recipe)
    stream = FeatureBatches(train_features, cfg.train.batch_size, pad_id_of(tokenizer, model), seed=cfg.train.seed,
                            bucket=cfg.bucket, keys=forward_keys(model))
    tcfg = resolved_train(cfg, len(stream))
    keeper = BestCheckpoint(model, tokenizer, out, metric, cfg.patience, recipe, resuming) if evaluator else None

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return evaluator(m).metrics  # type: ignore[misc]

    result = train(model, stream, tcfg, out, eval_fn if evaluator else None, resume=cfg.resume,
                   callbacks=[keeper] if keeper else [], tokenizer=tokenizer)
    if result.final_dir is not None and _is_main():
        write_recipe(result.final_dir, recipe)
    best_dir = out / BEST_DIR if keeper is not None and (out / BEST_DIR / RECIPE_FILE).is_file() else None
    dev_metrics: dict[str, float] = {}
    if evaluator is not None and _is_main():
        best_model = load(best_dir) if best_dir is not None else model
        report = evaluator(best_model.to(next(model.parameters()).device))
        write_report(report, out, "dev_eval")
        write_rows(report.rows, out / "dev_predictions.jsonl")
        dev_metrics = report.metrics
    return FinetuneResult(out_dir=out, final_dir=result.final_dir, best_dir=best_dir,
                          metric=metric if keeper else None, best_value=keeper.best if keeper else None,
                          best_step=keeper.best_step if keeper else None, dev_metrics=dev_metrics,
                          train_features=len(train_features), train=result, extra=extra or {})


def write_report(report: EvalReport, out_dir: Path, name: str) -> Path:
    """out_dir/NAME.json with metrics and details (+ NAME_confusion.png for classification)."""
    from plmkit.metrics import plot_confusion_matrix

    path = write_json(out_dir / f"{name}.json", {"metrics": report.metrics, **report.details})
    matrix = report.details.get("confusion_matrix")
    if matrix is not None and report.label_names:
        plot_confusion_matrix(np.asarray(matrix), report.label_names, out_dir / f"{name}_confusion.png")
    return path


@dataclass(frozen=True)
class Recipe:
    """One task's entry points, for the CLI, `plmkit eval` and `plmkit predict`."""

    name: str
    config: type[FinetuneConfig]
    finetune: Callable[..., FinetuneResult]
    read: Callable[[Any, str, bool], list[Any]]
    """read(cfg, path, labeled): examples; labeled=False also accepts files without references."""
    evaluate: Callable[[PretrainedModel, Tokenizer, Any, list[Any]], EvalReport]
    """evaluate(model, tokenizer, cfg, examples): predictions, and metrics where references exist."""
    heads: tuple[str, ...]
    """Model heads that serve this task (to recognise a checkpoint without finetune.json)."""
