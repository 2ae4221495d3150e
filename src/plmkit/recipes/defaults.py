"""Fine-tuning settings that fit the model and the data, for every field the user did not set.

`plmkit finetune` with no tuning flags should give a good result for the model it is given:
BERT-base's habits (lr 5e-5, 3 epochs) are far too timid for a 4-layer model, and a few hundred
labelled examples need many more passes than a hundred thousand. The rule, chosen by measurement
(benchmarks/README.md, "Fine-tuning defaults"):

=================  ===========================================================================
setting            rule
=================  ===========================================================================
learning rate      a pretrained checkpoint: 3e-5 (hidden >= 768), 5e-5 (>= 512), 1e-4 (smaller);
                   a model from random weights (a preset, or from_scratch): 1e-4 (>= 768),
                   3e-4 (smaller)
batch size         32; 16 under 1,000 training examples
epochs             3 under 10,000 examples, 2 under 100,000, else 1; and at least enough for
                   `MIN_STEPS` steps (capped at `MAX_EPOCHS`)
warmup             10% of the steps
=================  ===========================================================================

Only fields left unset are chosen (`FinetuneConfig.auto` lists them); the run records the values
in finetune.json and prints them at the start.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plmkit.recipes.tasks_base import FinetuneConfig

AUTO_FIELDS = ("lr", "batch_size", "epochs", "warmup")
MIN_STEPS = 300
MAX_EPOCHS = 100
WARMUP_RATIO = 0.1


def unset_fields(data: dict[str, Any], train_section: dict[str, Any]) -> list[str]:
    """Which of AUTO_FIELDS a config dict leaves to the rule."""
    given = {"lr": "lr" in train_section, "batch_size": "batch_size" in train_section,
             "epochs": "max_steps" in train_section or data.get("epochs") is not None,
             "warmup": bool({"warmup_steps", "warmup_ratio"} & set(train_section)) or data.get("warmup_ratio") is not None}
    return [name for name in AUTO_FIELDS if not given[name]]


def learning_rate(hidden_size: int, fresh: bool) -> float:
    """Peak LR for a model of this width, pretrained or from random weights."""
    if fresh:
        return 1e-4 if hidden_size >= 768 else 3e-4
    if hidden_size >= 768:
        return 3e-5
    return 5e-5 if hidden_size >= 512 else 1e-4


def epochs_for(examples: int, batch_size: int) -> int:
    """Passes over `examples` training rows in batches of `batch_size`."""
    base = 3 if examples < 10_000 else 2 if examples < 100_000 else 1
    per_epoch = max(1, math.ceil(examples / batch_size))
    return min(MAX_EPOCHS, max(base, math.ceil(MIN_STEPS / per_epoch)))


def with_defaults(cfg: FinetuneConfig, hidden_size: int, examples: int) -> FinetuneConfig:
    """`cfg` with the rule's value for every field in cfg.auto (see the module docstring)."""
    auto = set(cfg.auto)
    fresh = cfg.from_scratch or not Path(cfg.model).is_dir()
    train = cfg.train
    if "batch_size" in auto:
        train = dataclasses.replace(train, batch_size=16 if examples < 1000 else 32)
    if "lr" in auto:
        train = dataclasses.replace(train, lr=learning_rate(hidden_size, fresh))
    changes: dict[str, Any] = {"train": train}
    if "epochs" in auto:
        changes["epochs"] = float(epochs_for(examples, train.batch_size * train.grad_accum))
    if "warmup" in auto:
        changes["warmup_ratio"] = WARMUP_RATIO
    return dataclasses.replace(cfg, **changes)


def describe(cfg: FinetuneConfig) -> str:
    """The settings the rule chose, e.g. "lr 0.0003, batch 16, 20 epochs, warmup 10%" ("" when all were given)."""
    values = {"lr": lambda: f"lr {cfg.train.lr:g}", "batch_size": lambda: f"batch {cfg.train.batch_size}",
              "epochs": lambda: f"{cfg.epochs:g} epochs", "warmup": lambda: f"warmup {cfg.warmup_ratio:.0%}"}
    return ", ".join(values[f]() for f in cfg.auto)
