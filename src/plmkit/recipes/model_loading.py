"""The model and tokenizer a fine-tuning run starts from: a checkpoint (its backbone, a head for
the task) or a preset built from scratch, sized to the tokenizer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from plmkit.config import ConfigError, ModelConfig, from_dict, model_config, preset_names
from plmkit.data.tokenizer import Tokenizer
from plmkit.infer.batching import special_ids
from plmkit.models import PretrainedModel, build_model, load, read_config
from plmkit.recipes.adapt import adapted_model
from plmkit.recipes.tasks_base import FinetuneConfig
from plmkit.rundir import model_dir


def source_config(model: str | Path) -> ModelConfig:
    """The ModelConfig of a checkpoint directory (or training run), a preset name or a YAML file."""
    source = Path(model)
    if source.is_dir():
        return read_config(model_dir(source))[0]
    if source.suffix not in (".yaml", ".yml") and str(model) not in preset_names():
        raise FileNotFoundError(f"--model {str(model)!r}: no such checkpoint directory, and not a preset "
                                f"({', '.join(preset_names())})")
    return model_config(model)


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


def scratch_config(cfg: FinetuneConfig, tokenizer: Tokenizer, changes: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig of a preset / YAML file / checkpoint directory, sized to the tokenizer."""
    base = source_config(cfg.model).to_dict()
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
    freeze(model, cfg.freeze)
    return model


def freeze(model: PretrainedModel, prefixes: Sequence[str]) -> None:
    """Keep the parameters whose names start with one of `prefixes` fixed while fine-tuning."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            roots = sorted({".".join(n.split(".")[:3]) for n in names})
            raise ConfigError(f"freeze: no parameter of this model starts with {prefix!r}; names start with "
                              f"{', '.join(roots[:12])}, ...")
    for name, parameter in model.named_parameters():
        if name.startswith(tuple(prefixes)):
            parameter.requires_grad_(False)


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


__all__ = ["load_model", "load_tokenizer", "scratch_config", "source_config"]
