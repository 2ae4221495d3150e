"""plmkit: train, fine-tune, evaluate and serve your own pretrained language models.

    import plmkit
    model = plmkit.load("runs/sst2")                     # any plmkit or HF checkpoint directory
    clf = plmkit.pipeline("text-classification", "runs/sst2")
"""

from __future__ import annotations

from plmkit.config import ModelConfig, model_config
from plmkit.models import build_model, load
from plmkit.version import __version__


def pipeline(task: str, model, **kwargs):
    """A ready-to-call inference pipeline (see `plmkit.infer.pipeline`)."""
    from plmkit.infer.pipeline import pipeline as _pipeline

    return _pipeline(task, model, **kwargs)


__all__ = ["ModelConfig", "__version__", "build_model", "load", "model_config", "pipeline"]
