"""Shared fixtures: the real datasets in ../shared/data, a seeded single-threaded torch, and tiny models.

Speed tiers: plain ``pytest`` runs everything not marked ``slow`` (a few minutes on 2 CPU cores;
each test well under ~10 s); ``pytest -m slow`` (and ``make test``) adds the end-to-end runs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from plmkit.config import ModelConfig, from_dict, model_config
from plmkit.models import PretrainedModel, build_model

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PLMKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
TINY_SHAPE = {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_layers": 2, "max_positions": 64}
"""The shape every unit test's model shares unless it says otherwise."""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real datasets; tests that need it skip, saying why, when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set PLMKIT_SHARED_DATA)")
    return SHARED_DATA


# Tiny models run faster on one thread than on two contending ones (fused AdamW especially).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_config(preset: str = "bert-tiny", **changes: Any) -> ModelConfig:
    """A preset in the tiny test shape (`TINY_SHAPE`; a factorized embedding of 16), with `changes`."""
    base = model_config(preset)
    shape = dict(TINY_SHAPE)
    if base.embedding_size:
        shape["embedding_size"] = 16
    return from_dict(ModelConfig, {**dataclasses.asdict(base), **shape, **changes}, "model")


@pytest.fixture(name="tiny_config", scope="session")
def tiny_config_fixture() -> Callable[..., ModelConfig]:
    """`tiny_config` as a fixture: ``tiny_config(preset, **config_changes)``."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny() -> Callable[..., PretrainedModel]:
    """Factory ``tiny(preset, task, seed=0, **config_changes)``: a seeded random model of a preset
    in the tiny test shape, e.g. ``tiny("bert-tiny", "masked-lm", vocab_size=100)``."""

    def make(preset: str = "bert-tiny", task: str = "masked-lm", seed: int = 0, **changes: Any) -> PretrainedModel:
        torch.manual_seed(seed)
        return build_model(tiny_config(preset, **changes), task)

    return make


@pytest.fixture(scope="session")
def tiny_gpt(tiny) -> Callable[..., PretrainedModel]:
    """Factory ``tiny_gpt(seed=0, **config_changes)``: the tiny GPT of the loop and checkpoint tests
    (vocabulary 64, 32 positions; pad 0, bos 1, eos 2)."""

    def make(seed: int = 0, **changes: Any) -> PretrainedModel:
        return tiny("gpt-tiny", "causal-lm", seed, **{"vocab_size": 64, "max_positions": 32, "pad_token_id": 0,
                                                      "bos_token_id": 1, "eos_token_id": 2, **changes})

    return make
