"""Optional dependencies: which extra brings each one, and one clear error when it is missing.

A plain ``pip install plmkit`` is enough to prepare data and pretrain. The rest comes in extras
(see pyproject.toml): ``metrics`` (scikit-learn, seqeval, sacrebleu, rouge-score: the scores
of fine-tuning and evaluation), ``serve`` (the HTTP server), ``parquet`` (Parquet files and
Hugging Face datasets folders), ``tensorboard``, ``zh`` (Chinese word segmentation), ``all``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from plmkit.errors import UserError

PACKAGES = {"sklearn": "scikit-learn", "seqeval": "seqeval", "sacrebleu": "sacrebleu", "rouge_score": "rouge-score",
            "pyarrow": "pyarrow", "tensorboard": "tensorboard", "fastapi": "fastapi", "uvicorn": "uvicorn",
            "prometheus_client": "prometheus_client", "jieba": "jieba", "matplotlib": "matplotlib"}
"""Import name -> the pip package that provides it."""


class MissingExtraError(UserError):
    """An optional dependency a feature needs is not installed."""

    def __init__(self, module: str, extra: str, what: str) -> None:
        package = PACKAGES.get(module, module)
        super().__init__(f"{what} needs {package}, which is not installed: pip install 'plmkit[{extra}]'")
        self.module, self.extra = module, extra


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, or raise MissingExtraError saying which extra to install for `what`."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:  # the module, or a package it needs (seqeval needs scikit-learn)
        raise MissingExtraError((e.name or module).split(".")[0], extra, what) from None


def available(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


__all__ = ["PACKAGES", "MissingExtraError", "available", "require"]
