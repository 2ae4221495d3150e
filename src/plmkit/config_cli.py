"""`plmkit config TASK`: every field behind ``--set KEY=VALUE`` (and a ``--config`` YAML file),
with its default and what it does.

    plmkit config classification          # plmkit finetune classification --set ...
    plmkit config pretrain --config gpt-tiny   # the values of a preset
    plmkit config curve

The text comes from the config dataclasses themselves (`plmkit.config.describe_fields`): each
field's type, its default and the docstring written below it.
"""

from __future__ import annotations

import argparse
from typing import Any

from plmkit.config import describe_fields, format_fields, preset_names

TASKS = ("pretrain", "classification", "ner", "qa", "summarization", "translation", "lm", "curve")


def config_fields_text(task: str, preset: str | None = None) -> str:
    """The listing `plmkit config TASK` prints."""
    if task == "pretrain":
        from plmkit.recipes.pretrain import PretrainConfig, load_config

        name = preset or "bert-mini"
        head = (f"plmkit pretrain --config {name}: the preset's values; change any with --set KEY=VALUE "
                f"(presets: {', '.join(preset_names())})")
        return f"{head}\n\n{format_fields(describe_fields(PretrainConfig, load_config(name)))}"
    if preset is not None:
        raise ValueError(f"--config applies to `plmkit config pretrain` (a preset), not to {task}")
    if task == "curve":
        from plmkit.recipes.curve import CurveConfig

        head = ("plmkit curve: fields of --set KEY=VALUE or a --config YAML file (recipe.* and scratch_recipe.* "
                "take any field of the task's config: `plmkit config classification`)")
        return f"{head}\n\n{format_fields(describe_fields(CurveConfig))}"
    from plmkit.recipes.finetune import recipe
    from plmkit.recipes.tasks_base import default_train

    chosen = recipe(task)
    values: dict[str, Any] = {"train": default_train()}
    if task == "translation":
        values["kind"] = "translation"
    head = (f"plmkit finetune {task}: fields of --set KEY=VALUE or a --config YAML file (--model, --train, --dev, "
            "-o and the other flags set the fields of the same name)")
    return f"{head}\n\n{format_fields(describe_fields(chosen.config, values))}"


def cli_configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=TASKS, metavar="TASK",
                        help=f"whose settings to list: {', '.join(TASKS)}")
    parser.add_argument("--config", default=None, metavar="PRESET",
                        help="pretrain: show this preset's (or YAML file's) values (default: bert-mini)")


def cli_run(args: argparse.Namespace) -> int:
    print(config_fields_text(args.task, args.config))
    return 0
