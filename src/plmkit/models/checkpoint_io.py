"""Model directories: config.json + model.safetensors (+ tokenizer files), in Hugging Face's layout.

Weights are read only from safetensors: nothing is ever unpickled. A model loaded for a
different task than it was saved with (a pretrained encoder for classification, say) keeps
the backbone and starts the new head fresh; anything else missing is an error.

Loading checks before it allocates: config.json is validated field by field (`ConfigError`
naming the field), and the shape of every tensor the config implies is compared with the
weights file's header, so a config that would allocate gigabytes the file does not hold is
refused. Weights holding NaN or infinity are refused too (`DataError` naming the tensor).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from plmkit.config import ConfigError, from_dict, ModelConfig
from plmkit.errors import DataError
from plmkit.files import atomic_write, no_space_as_error
from plmkit.models import hf_compat
from plmkit.models.registry import build_model

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_BACKBONE_ROOTS = ("transformer.", "encoder.", "decoder.")


def save_model(model, directory: str | Path, tokenizer=None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files); each file is written then renamed,
    replacing a file of that name in `directory`. A full disk is a ResourceError naming the folder."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg, task = model.config, model.task
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tied = model.tied_parameter_names()
    if hf_compat.hf_representable(cfg):
        tensors = hf_compat.to_hf_state(state, cfg, task, skip=tied)
    else:
        tensors = {k: v.contiguous() for k, v in state.items() if k not in tied}
    with no_space_as_error(out, "the model was not saved (files already there are unchanged)"):
        atomic_write(out / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
        text = json.dumps(hf_compat.config_to_hf(cfg, task), indent=2, sort_keys=True)
        atomic_write(out / CONFIG_FILE, lambda p: p.write_text(text + "\n", encoding="utf-8"))
        if tokenizer is not None:
            tokenizer.save(out)
    for attr, sub in getattr(model, "companions", {}).items():  # e.g. ELECTRA's generator in generator/
        save_model(getattr(model, attr), out / sub)
    return out


def read_config(directory: str | Path) -> tuple[ModelConfig, str]:
    """(ModelConfig, task) of a model directory; errors name the file."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is {directory} a model directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # also NaN/Infinity spelled in ways JSON does not know
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    return hf_compat.config_from_hf(data, str(path))


def _missing_weights(folder: Path) -> FileNotFoundError:
    path = folder / WEIGHTS_FILE
    pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
    hint = f" ({', '.join(pickled)} found: plmkit never unpickles; convert to safetensors)" if pickled else ""
    return FileNotFoundError(f"{path}: no such file{hint}")


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors; DataError naming a tensor that holds NaN or infinity."""
    folder = Path(directory)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise _missing_weights(folder)
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(path, None, f"not a readable safetensors file: {e}") from None
    for name, t in weights.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise DataError(path, None, f"tensor {name} holds {bad} NaN or infinite values (of {t.numel()}); "
                                        "these weights cannot give meaningful results")
    return weights


def read_shapes(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors as empty "meta" tensors of the right shape: the header only."""
    folder = Path(directory)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise _missing_weights(folder)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(path, None, f"not a readable safetensors file: {e}") from None


def load_model(directory: str | Path, task: str | None = None, **overrides):
    """Load a plmkit or HF model directory, optionally for another task and with config overrides.

    overrides are ModelConfig fields (e.g. num_labels=3, id2label={...}, dropout=0.0). The
    model remembers its folder as ``model.loaded_from``.
    """
    cfg, saved_task = read_config(directory)
    task = task or saved_task
    if cfg.family == "electra" and task == "pretraining":
        cfg = _with_generator_size(cfg, Path(directory))
    if overrides:
        cfg = from_dict(ModelConfig, {**cfg.to_dict(), **overrides}, "model")
    path = Path(directory) / WEIGHTS_FILE
    with torch.device("meta"):  # shapes only: nothing is allocated until they agree with the file
        skeleton = build_model(cfg, task)
    elsewhere = tuple(f"{attr}." for attr in getattr(skeleton, "companions", {}))  # saved in their own folders
    _check_against(skeleton, *_to_plmkit(read_shapes(directory), cfg, task, skeleton), path, task != saved_task,
                   elsewhere)
    model = build_model(cfg, task)
    state, unused = _to_plmkit(read_weights(directory), cfg, task, model)
    _load_checked(model, state, unused, path, task != saved_task, elsewhere)
    for attr, sub in getattr(model, "companions", {}).items():
        _load_companion(model, attr, Path(directory) / sub)
    model.loaded_from = str(directory)
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


def _to_plmkit(weights: dict[str, torch.Tensor], cfg: ModelConfig, task: str, model) -> tuple[dict, list[str]]:
    """(plmkit-named tensors, names in the file that no plmkit tensor uses)."""
    if hf_compat.hf_representable(cfg):
        return hf_compat.from_hf_state(weights, cfg, task)
    expected = model.state_dict()
    return {k: v for k, v in weights.items() if k in expected}, [k for k in weights if k not in expected]


def _check_against(model, state: dict[str, torch.Tensor], unused: list[str], path: Path, new_task: bool,
                   elsewhere: tuple[str, ...] = ()) -> None:
    """Shape, missing and unexpected tensors (see `_load_checked`), and a new head no larger than the
    file: errors here come before any allocation. Tensors under the `elsewhere` prefixes live in
    other files (ELECTRA's generator/)."""
    expected = model.state_dict()
    _check_names(model, expected, state, unused, path, new_task, elsewhere)
    fresh = {k: v.numel() for k, v in expected.items()
             if k not in state and k not in model.tied_parameter_names() and not k.startswith(elsewhere)}
    held = sum(v.numel() for v in state.values())
    if sum(fresh.values()) > max(held, 10**7):
        biggest = max(fresh, key=fresh.get)
        raise ConfigError(f"{path.parent / CONFIG_FILE}: the new {model.task} head would have "
                          f"{sum(fresh.values()):,} parameters ({biggest}: {tuple(expected[biggest].shape)}), more than "
                          f"the {held:,} of {path.name}; check num_labels and the other sizes")


def _check_names(model, expected: dict, state: dict, unused: list[str], path: Path, new_task: bool,
                 elsewhere: tuple[str, ...] = ()) -> list[str]:
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
    return missing


def _load_checked(model, state: dict[str, torch.Tensor], unused: list[str], path: Path, new_task: bool,
                  elsewhere: tuple[str, ...] = ()) -> None:
    missing = _check_names(model, model.state_dict(), state, unused, path, new_task, elsewhere)
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    if missing:
        log.info("%s: new %s head initialized fresh: %s", path.parent, model.task, ", ".join(missing))
