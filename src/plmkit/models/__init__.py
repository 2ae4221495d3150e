"""plmkit models: one set of layers in three shapes, with task heads.

    build_model(config, task)  a fresh, randomly initialized model
    load(path, task=None)      a plmkit or Hugging Face checkpoint directory, or a training run
"""

from __future__ import annotations

from pathlib import Path

from plmkit.models.base import ModelOutput, PretrainedModel, eval_mode
from plmkit.models.checkpoint_io import load_model, read_config, save_model
from plmkit.models.encoder_decoder import Seq2SeqLM
from plmkit.models.layers import KVCache
from plmkit.models.registry import FAMILY_MODELS, MODELS, TASKS, build_model
from plmkit.rundir import model_dir


def load(path: str | Path, task: str | None = None, **overrides) -> PretrainedModel:
    """Load any plmkit or Hugging Face (BERT, RoBERTa, ALBERT, ELECTRA, GPT-2) checkpoint directory,
    or the model of a training run (its best/, else final/; see `plmkit.rundir.model_dir`)."""
    return load_model(model_dir(path), task=task, **overrides)


__all__ = [
    "FAMILY_MODELS",
    "KVCache",
    "MODELS",
    "ModelOutput",
    "PretrainedModel",
    "Seq2SeqLM",
    "TASKS",
    "build_model",
    "eval_mode",
    "load",
    "read_config",
    "save_model",
]
