"""What every fine-tuning task shares: its config schema and parsing, the evaluation report, and
the `Recipe` record each task module fills in (for the CLI, `plmkit eval` and `plmkit predict`).

The rest of a fine-tuning run lives beside this module: `plmkit.recipes.model_loading` (model and
tokenizer), `plmkit.recipes.best_checkpoint` (out/best and early stopping),
`plmkit.recipes.finetune_run` (the run around the one loop) and `plmkit.rundir` (the run
directory's files). A task evaluates through its pipeline (`plmkit.infer.pipeline`), with the
options `Recipe.pipeline_options` derives from its config, so a dev metric measures what
`plmkit.pipeline` gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from plmkit.config import ConfigError, from_dict, preset_names
from plmkit.errors import UserError
from plmkit.extras import require
from plmkit.heads import RECIPE_PIPELINES, recipe_heads
from plmkit.recipes.adapt import AdaptConfig
from plmkit.recipes.batches import DEFAULT_BUCKET
from plmkit.recipes.defaults import AUTO_FIELDS, unset_fields
from plmkit.rundir import hub_hint, model_dir
from plmkit.train.loop import TrainConfig

if TYPE_CHECKING:
    from plmkit.infer.base import Pipeline

C = TypeVar("C", bound="FinetuneConfig")


def default_train() -> TrainConfig:
    """The `train:` section's defaults for fine-tuning (BERT-paper learning rate, dev eval every 200 steps)."""
    return TrainConfig(lr=5e-5, warmup_steps=0, max_steps=1000, batch_size=32, eval_every=200, save_every=500,
                       log_every=10)


@dataclass
class FinetuneConfig:
    """Fields every task shares. `--set key=value` on the command line sets any of them."""

    model: str
    """A checkpoint directory (plmkit or Hugging Face; a training run means its best/, else final/,
    model) or a preset name / YAML file (from scratch)."""
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
    """Warm up over this fraction of train.max_steps (the same as train.warmup_ratio)."""
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
    bucket: int = DEFAULT_BUCKET
    """Length bucketing of training batches: sort within windows of this many batches, so a batch of
    short texts is not padded to a long one (0 = off: plain shuffled batches)."""
    resume: str | None = None
    """"auto" (newest checkpoint in out, if any) or a checkpoint path."""
    train: TrainConfig = field(default_factory=default_train)
    """The training loop's settings (train.lr, train.max_steps, train.batch_size, ...)."""
    freeze: list[str] = field(default_factory=list)
    """Parameter name prefixes kept fixed while fine-tuning, e.g. [transformer.emb] (the embeddings)."""
    auto: list[str] = field(default_factory=list)
    """Training settings chosen by plmkit for the model and the data (plmkit.recipes.defaults):
    those of lr, batch_size, epochs, warmup that were not set. Filled in when the config is read."""
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    """Task-adaptive pretraining on the training texts before fine-tuning (adapt.steps > 0; see
    plmkit.recipes.adapt)."""

    renamed: ClassVar[dict[str, str]] = {}
    """Old field name -> its new name: still accepted (configs and finetune.json of earlier runs)."""

    def __post_init__(self) -> None:
        if unknown := sorted(set(self.auto) - set(AUTO_FIELDS)):
            raise ConfigError(f"auto: unknown setting(s) {', '.join(unknown)}; choose from {', '.join(AUTO_FIELDS)}")
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

    A partial ``train`` mapping is laid over the fine-tuning defaults (`default_train`); the tuning
    settings it leaves unset are listed in ``auto``, to be chosen for the model and data. A
    training run given as `model` is resolved to its model folder (best/, else final/) here, once.
    """
    if isinstance(data, cls):
        if fields:
            raise ConfigError(f"pass either a {cls.__name__} or fields, not both")
        cfg = data
    else:
        merged = {**dict(data or {}), **fields}
        train_section = merged.get("train", {})
        if isinstance(train_section, TrainConfig):
            train_section = dataclasses.asdict(train_section)
        if not isinstance(train_section, Mapping):
            raise ConfigError(f"train: expected a mapping of loop settings, got {train_section!r}")
        merged.setdefault("auto", unset_fields(merged, dict(train_section)))
        merged["train"] = {**dataclasses.asdict(default_train()), **train_section}
        for old, new in cls.renamed.items():
            if old in merged:
                if new in merged:
                    raise ConfigError(f"{old} is the old name of {new}: give one of them")
                merged[new] = merged.pop(old)
        cfg = from_dict(cls, merged)
    if Path(cfg.model).is_dir():
        cfg = dataclasses.replace(cfg, model=str(model_dir(cfg.model)))
    else:
        check_model_source(cfg.model)
    return cfg


def check_model_source(model: str) -> None:
    """A FileNotFoundError, one message, for a --model that is neither a folder nor a preset / YAML file
    (a Hugging Face Hub name gets the sentence that says to download it first)."""
    if Path(model).suffix in (".yaml", ".yml") or model in preset_names():
        return
    raise FileNotFoundError(f"--model {model!r}: no such model folder or training run, and not a preset "
                    f"({', '.join(preset_names())}).{hub_hint(model)}")


def subsample(examples: list[Any], limit: int | None, fraction: float = 1.0, seed: int = 0) -> list[Any]:
    """The first `limit` examples, then a random `fraction` of them (at least one), in file order."""
    if limit is not None:
        examples = examples[:limit]
    if fraction < 1.0 and examples:
        count = max(1, round(fraction * len(examples)))
        keep = np.sort(np.random.default_rng([seed, 0xC0DE]).choice(len(examples), count, replace=False))
        examples = [examples[i] for i in keep]
    return examples


# --------------------------------------------------------------------------- evaluation


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


def task_pipeline(recipe: str, model: Any, tokenizer: Any, cfg: FinetuneConfig,
                  options: Mapping[str, Any]) -> Pipeline:
    """The pipeline a recipe evaluates and predicts with: the one `plmkit.pipeline` builds for its
    runs, with the run's options, batches of cfg.eval_batch_size, on the model's device."""
    from plmkit.infer.pipeline import PIPELINES

    return PIPELINES[RECIPE_PIPELINES[recipe]](model, tokenizer, batch_size=cfg.eval_batch_size, **options)


def predict(pipe: Pipeline, inputs: list[Any], wheres: Sequence[str]) -> list[dict[str, Any]]:
    """The pipeline's results for every input; an input it cannot use is a UserError naming
    where it came from (``file:line`` of the example)."""
    from plmkit.infer.base import InputError

    try:
        results = pipe(inputs)
    except InputError as e:
        raise UserError(f"{wheres[e.index]}: {e.reason}") from None
    return results  # type: ignore[return-value]


@dataclass(frozen=True)
class Recipe:
    """One task's entry points, for the CLI, `plmkit eval` and `plmkit predict`."""

    name: str
    config: type[FinetuneConfig]
    finetune: Callable[..., Any]
    """finetune(config or fields) -> FinetuneResult."""
    read: Callable[[Any, str, bool], list[Any]]
    """read(cfg, path, labeled): examples; labeled=False also accepts files without references."""
    evaluate: Callable[[Any, Any, Any, list[Any]], EvalReport]
    """evaluate(model, tokenizer, cfg, examples): predictions, and metrics where references exist."""
    pipeline_options: Callable[[Any], dict[str, Any]]
    """pipeline_options(cfg): the options of the task's pipeline that the config implies (recorded
    in finetune.json, so `plmkit.pipeline` on the run predicts as `plmkit eval` does)."""
    text_column: str | None = "text_column"
    """The config field the command line's --text-column sets; None: the task's files have a fixed layout."""
    requires: tuple[str, ...] = ()
    """Modules its dev metrics need (from the ``metrics`` extra), checked before training starts."""

    def check_requirements(self) -> None:
        """A MissingExtraError naming the extra when a module the task's metrics need is missing."""
        for module in self.requires:
            require(module, "metrics", f"{self.name} dev metrics")

    @property
    def heads(self) -> tuple[str, ...]:
        """Model heads this task trains (to recognise a checkpoint without finetune.json)."""
        return recipe_heads(self.name)

    @property
    def pipeline_task(self) -> str:
        """The pipeline task of this recipe's runs."""
        return RECIPE_PIPELINES[self.name]


__all__ = ["EvalReport", "FinetuneConfig", "Recipe", "check_model_source", "default_train", "parse_config", "predict",
           "subsample", "task_pipeline"]
