"""Model directories: config.json + model.safetensors (+ tokenizer files), in Hugging Face's layout.

Weights are read only from safetensors: nothing is ever unpickled. A model loaded for a
different task than it was saved with (a pretrained encoder for classification, say) keeps
the backbone and starts the new head fresh; anything else missing is an error.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from plmkit.config import ConfigError, from_dict, ModelConfig
from plmkit.models import hf_compat

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_BACKBONE_ROOTS = ("transformer.", "encoder.", "decoder.")


def save_model(model, directory: str | Path, tokenizer=None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files); each file is written then renamed."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg, task = model.config, model.task
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tied = model.tied_parameter_names()
    if hf_compat.hf_representable(cfg):
        tensors = hf_compat.to_hf_state(state, cfg, task, skip=tied)
    else:
        tensors = {k: v.contiguous() for k, v in state.items() if k not in tied}
    _atomic_write(out / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    text = json.dumps(hf_compat.config_to_hf(cfg, task), indent=2, sort_keys=True)
    _atomic_write(out / CONFIG_FILE, lambda p: p.write_text(text + "\n", encoding="utf-8"))
    if tokenizer is not None:
        tokenizer.save(out)
    for attr, sub in getattr(model, "companions", {}).items():  # e.g. ELECTRA's generator in generator/
        save_model(getattr(model, attr), out / sub)
    return out


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def read_config(directory: str | Path) -> tuple[ModelConfig, str]:
    """(ModelConfig, task) of a model directory; errors name the file."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is {directory} a model directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    return hf_compat.config_from_hf(data, str(path))


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    folder = Path(directory)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = f" ({', '.join(pickled)} found: plmkit never unpickles; convert to safetensors)" if pickled else ""
        raise FileNotFoundError(f"{path}: no such file{hint}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file: {e}") from None


def load_model(directory: str | Path, task: str | None = None, **overrides):
    """Load a plmkit or HF model directory, optionally for another task and with config overrides.

    overrides are ModelConfig fields (e.g. num_labels=3, id2label={...}, dropout=0.0).
    """
    from plmkit.models import build_model

    cfg, saved_task = read_config(directory)
    task = task or saved_task
    if cfg.family == "electra" and task == "pretraining":
        cfg = _with_generator_size(cfg, Path(directory))
    if overrides:
        cfg = from_dict(ModelConfig, {**cfg.to_dict(), **overrides}, "model")
    model = build_model(cfg, task)
    weights = read_weights(directory)
    path = Path(directory) / WEIGHTS_FILE
    if hf_compat.hf_representable(cfg):
        state, unused = hf_compat.from_hf_state(weights, cfg, task)
    else:
        expected = model.state_dict()
        state = {k: v for k, v in weights.items() if k in expected}
        unused = [k for k in weights if k not in expected]
    companions = getattr(model, "companions", {})
    _load_checked(model, state, unused, path, task != saved_task, tuple(f"{a}." for a in companions))
    for attr, sub in companions.items():
        _load_companion(model, attr, Path(directory) / sub)
    return model


def _with_generator_size(cfg: ModelConfig, directory: Path) -> ModelConfig:
    """An ELECTRA config whose generator_size matches the generator saved beside it. plmkit's own
    config.json records generator_size; a Hugging Face pair does not, so the ratio of the two
    hidden sizes stands in (the shapes are checked when the generator's weights load)."""
    from plmkit.models.electra import GENERATOR_DIR

    folder = directory / GENERATOR_DIR
    if not (folder / CONFIG_FILE).is_file() or "plmkit" in json.loads((directory / CONFIG_FILE).read_text("utf-8")):
        return cfg
    generator, _ = read_config(folder)
    return from_dict(ModelConfig, {**cfg.to_dict(), "generator_size": generator.hidden_size / cfg.hidden_size},
                     "model")


def _load_companion(model, attr: str, folder: Path) -> None:
    """Load the weights of a model's companion (ELECTRA's generator) from its subfolder, except the
    tensors it shares with the main model; a missing subfolder leaves it freshly initialized."""
    companion = getattr(model, attr)
    if not (folder / CONFIG_FILE).is_file():
        log.info("%s: no %s saved beside the model; a fresh one is initialized", folder.parent, attr)
        return
    saved = load_model(folder, task=companion.task)
    expected = {k: v.shape for k, v in companion.state_dict().items()}
    got = {k: v.shape for k, v in saved.state_dict().items()}
    if expected != got:
        diff = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        raise ValueError(f"{folder}: the saved {attr} does not match the model's ({', '.join(diff[:4])})")
    shared = {id(p) for n, p in model.named_parameters() if not n.startswith(f"{attr}.")}
    own = {n for n, p in companion.named_parameters(remove_duplicate=False) if id(p) not in shared}
    own |= {n for n, _ in companion.named_buffers()}
    companion.load_state_dict({k: v for k, v in saved.state_dict().items() if k in own}, strict=False)


def _load_checked(model, state: dict[str, torch.Tensor], unused: list[str], path: Path, new_task: bool,
                  elsewhere: tuple[str, ...] = ()) -> None:
    """Load `state` into `model`; tensors under the `elsewhere` prefixes are saved in other files."""
    expected = model.state_dict()
    for k, v in state.items():
        if k in expected and expected[k].shape != v.shape:
            raise ValueError(f"{path}: tensor {k} has shape {tuple(v.shape)}, the config expects {tuple(expected[k].shape)}")
    tied = model.tied_parameter_names()
    missing = [k for k in expected if k not in state and k not in tied and not k.startswith(elsewhere)]
    backbone_missing = [k for k in missing if k.startswith(_BACKBONE_ROOTS)]
    if backbone_missing or (missing and not new_task):
        raise ValueError(f"{path}: missing tensors {(backbone_missing or missing)[:8]} (of {len(missing)})")
    if unused and not new_task:
        raise ValueError(f"{path}: unexpected tensors {unused[:8]} (of {len(unused)})")
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    if missing:
        log.info("%s: new %s head initialized fresh: %s", path.parent, model.task, ", ".join(missing))
