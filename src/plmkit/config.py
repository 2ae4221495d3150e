"""Typed configuration: dataclasses are the schema, YAML presets are data.

Every config is a dataclass. `from_dict` builds one from plain data and rejects an unknown
key or a value of the wrong type with an error that names the field and lists the valid
keys; `apply_overrides` applies dotted ``key=value`` strings (the CLI's ``--set``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from plmkit.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A configuration value is missing, unknown or of the wrong type."""


_SIZE_LIMITS = {"vocab_size": 1 << 24, "hidden_size": 1 << 16, "num_layers": 1024, "num_decoder_layers": 1024,
                "num_heads": 1024, "intermediate_size": 1 << 18, "max_positions": 1 << 20, "type_vocab_size": 1 << 10,
                "embedding_size": 1 << 16, "num_labels": 1 << 20}
"""Upper bounds of ModelConfig sizes: far above any real model, low enough to catch a typo."""
_MAX_PARAMETERS = 20_000_000_000


@dataclass
class ModelConfig:
    """The shape of a Transformer: one schema for encoders, decoders and encoder-decoders."""

    arch: Literal["encoder", "decoder", "encoder-decoder"] = "encoder"
    """Which shape: bidirectional encoder (BERT), causal decoder (GPT) or both (seq2seq)."""
    family: Literal["bert", "roberta", "albert", "electra", "gpt2", "seq2seq"] = "bert"
    """Checkpoint family, used for Hugging Face export and family-specific details."""
    vocab_size: int = 30522
    """Tokens in the vocabulary (pretraining and fine-tuning from a preset take it from the tokenizer)."""
    hidden_size: int = 768
    """Width of every layer (the embedding size too, unless embedding_size says otherwise)."""
    num_layers: int = 12
    """Encoder layers (or decoder layers for a decoder-only model)."""
    num_decoder_layers: int | None = None
    """Decoder layers of an encoder-decoder; None means the same as num_layers."""
    num_heads: int = 12
    """Attention heads per layer; hidden_size must be divisible by it."""
    intermediate_size: int = 3072
    """Width of each feed-forward block's hidden layer (usually 4 x hidden_size)."""
    activation: Literal["gelu", "gelu_tanh", "relu", "silu"] = "gelu"
    """Activation of the feed-forward blocks (gelu_tanh is GPT-2's approximation)."""
    norm: Literal["post", "pre"] = "post"
    """post = BERT (LayerNorm after each residual add); pre = GPT-2 (LayerNorm before each sublayer)."""
    position: Literal["learned", "rotary"] = "learned"
    """Position information: a learned embedding per position (BERT, GPT-2) or rotary embeddings (RoPE)."""
    max_positions: int = 512
    """Longest sequence the model accepts (rows of the learned position table)."""
    position_offset: int = 0
    """First position id (RoBERTa's learned positions start at padding_idx + 1 = 2)."""
    type_vocab_size: int = 2
    """Token-type (segment) vocabulary; 0 disables token-type embeddings."""
    dropout: float = 0.1
    """Dropout on embeddings and after each sublayer during training."""
    attention_dropout: float = 0.1
    """Dropout on the attention probabilities during training."""
    layer_norm_eps: float = 1e-12
    """Epsilon of every LayerNorm."""
    tie_embeddings: bool = True
    """Output projection of the LM head shares the input embedding matrix."""
    embedding_size: int | None = None
    """ALBERT / ELECTRA: factorized embedding size (projected up to hidden_size); None = hidden_size."""
    share_layers: bool = False
    """ALBERT: one set of layer weights applied num_layers times."""
    generator_size: float = 0.25
    """ELECTRA pretraining: the generator's hidden size, feed-forward size and heads as a fraction of
    this (the discriminator's) model; it has as many layers and shares the embeddings."""
    rtd_weight: float = 50.0
    """ELECTRA pretraining: weight of the replaced-token-detection loss next to the generator's MLM loss."""
    rotary_base: float = 10000.0
    """Rotary positions: the base of the rotation frequencies."""
    initializer_range: float = 0.02
    """Standard deviation of the normal distribution new weights are drawn from."""
    pad_token_id: int = 0
    """Id of the padding token (from the tokenizer)."""
    bos_token_id: int | None = None
    """Id of the token that begins a sequence, if any (from the tokenizer)."""
    eos_token_id: int | None = None
    """Id of the token that ends a sequence, if any (from the tokenizer); generation stops there."""
    decoder_start_token_id: int | None = None
    """Encoder-decoder: first token fed to the decoder (defaults to bos, then pad)."""
    num_labels: int = 2
    """Classification heads: number of classes (token classification: number of tags)."""
    id2label: dict[int, str] | None = None
    """Class names, kept with the checkpoint."""
    problem_type: Literal["single_label", "multi_label", "regression"] = "single_label"
    """Sequence classification: one class per text, several (independent sigmoids), or a number."""
    classifier_dropout: float | None = None
    """Dropout before a classification head; None = dropout."""

    def __post_init__(self) -> None:
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers if self.num_decoder_layers is not None else self.num_layers

    @property
    def label2id(self) -> dict[str, int] | None:
        return None if self.id2label is None else {v: k for k, v in self.id2label.items()}

    def validate(self) -> None:
        """ConfigError naming the first field that cannot describe a model: a wrong type, a size
        that is not positive or absurdly large, a probability outside [0, 1), a negative token
        id. Runs before anything is allocated."""
        hints = typing.get_type_hints(ModelConfig)
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(getattr(self, f.name), hints[f.name], f"model.{f.name}"))
        for name, limit in _SIZE_LIMITS.items():
            value = getattr(self, name)
            if value is None:
                continue
            low = 0 if name == "type_vocab_size" else 1
            if not low <= value <= limit:
                raise ConfigError(f"model.{name} must be between {low} and {limit:,}, got {value}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_heads ({self.num_heads})"
            )
        if self.position == "rotary" and self.head_dim % 2:
            raise ConfigError(f"rotary positions need an even head size, got {self.head_dim}")
        if not 0.0 < self.generator_size <= 1.0:
            raise ConfigError(f"model.generator_size must be in (0, 1], got {self.generator_size}")
        if self.rtd_weight < 0:
            raise ConfigError(f"model.rtd_weight must be >= 0, got {self.rtd_weight}")
        for name in ("dropout", "attention_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {value}")
        for name, ok in (("layer_norm_eps", 0.0 < self.layer_norm_eps < 1.0),
                         ("initializer_range", 0.0 <= self.initializer_range < 10.0),
                         ("rotary_base", 1.0 < self.rotary_base < 1e12),
                         ("position_offset", 0 <= self.position_offset < self.max_positions)):
            if not ok:
                raise ConfigError(f"model.{name} is out of range: {getattr(self, name)}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"model.{name} must be a token id (>= 0), got {value}")
        params = self.approx_parameters()
        if params > _MAX_PARAMETERS:
            raise ConfigError(f"model: about {params:.2g} parameters ({4 * params / 2**30:,.0f} GiB in fp32); "
                              "check vocab_size, hidden_size, intermediate_size, num_layers and max_positions")

    def approx_parameters(self) -> int:
        """The parameter count, to within a few percent (embeddings, blocks, cross-attention)."""
        h, e = self.hidden_size, self.embedding_size or self.hidden_size
        embeddings = self.vocab_size * e + (self.max_positions if self.position == "learned" else 0) * e
        block = 4 * h * h + 2 * h * self.intermediate_size
        blocks = (1 if self.share_layers else self.num_layers) * block
        if self.arch == "encoder-decoder":
            blocks += self.decoder_layers * (block + 4 * h * h)
        return embeddings + self.type_vocab_size * e + blocks

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- parsing


_PLAIN_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _type_name(tp: Any) -> str:
    """What a value of annotation `tp` may be, in words: "an integer or 'auto'"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if origin is Literal:
        return " or ".join(repr(arg) for arg in args)
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    return _PLAIN_NAMES.get(tp) or getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and lightly convert) `value` against the annotation `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, str) and value.strip():  # --set labels=negative,positive
            value = [part.strip() for part in value.split(",")]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    prefix = f"{where}." if where else ""
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys of {cls.__name__}: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{cls.__name__}: {e}") from None


def _parse_scalar(text: str) -> Any:
    """A --set value as YAML would read it, except that 3e-5 is a number (YAML 1.1 needs 3.0e-5)."""
    if text == "":
        return ""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to nested dict `data` (values parsed as YAML scalars)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p} is not a section")
        node[parts[-1]] = _parse_scalar(text)
    return data


# --------------------------------------------------------------------------- field documentation


@dataclass(frozen=True)
class FieldDoc:
    """One settable field of a config, as `plmkit config` lists it."""

    key: str
    """Dotted key, as --set spells it (train.lr)."""
    type: str
    default: Any
    """The default value; `REQUIRED` when the field has none."""
    doc: str


REQUIRED = object()
"""The default of a field that must be given."""


def field_docs(cls: type) -> dict[str, str]:
    """The docstring of each field of dataclass `cls` (and its bases): the string literal written
    right below the field in the class body. Fields without one (or a class whose source cannot
    be read) map to ""."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:] + [None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                text = ""
                if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                        and isinstance(after.value.value, str)):
                    text = inspect.cleandoc(after.value.value)
                docs[node.target.id] = " ".join(text.split())
    return docs


def describe_fields(cls: type, values: Any = None, prefix: str = "") -> list[FieldDoc]:
    """Every field of dataclass `cls`, sections (nested dataclasses) expanded to dotted keys, with
    its type, default (from `values`, an instance or a dict, when given) and docstring."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    out: list[FieldDoc] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if isinstance(values, dict):
            default = values.get(f.name, _default_of(f))
        elif values is not None:
            default = getattr(values, f.name, _default_of(f))
        else:
            default = _default_of(f)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out += describe_fields(tp, None if default is REQUIRED else default, f"{prefix}{f.name}.")
            continue
        out.append(FieldDoc(prefix + f.name, _type_text(tp), default, docs.get(f.name, "")))
    return out


def _type_text(tp: Any) -> str:
    """A type as `plmkit config` shows it: "int | None", "one of encoder, decoder"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_text(a) for a in args)
    if origin in (list, tuple, dict):
        inner = ", ".join(_type_text(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return REQUIRED


def format_fields(fields: list[FieldDoc], width: int = 100) -> str:
    """`fields` as text: ``key = default  (type)`` and the docstring below, indented."""
    import textwrap

    lines: list[str] = []
    for item in fields:
        if item.default is REQUIRED:
            value = "(required)"
        else:
            default = dataclasses.asdict(item.default) if dataclasses.is_dataclass(item.default) else item.default
            value = yaml.safe_dump(default, default_flow_style=True, width=10**6).strip()
            value = value[:-4].rstrip() if value.endswith("\n...") else value.removesuffix("...").strip()
            if "\n" in value:  # a string with line breaks: its escaped, one-line form
                value = json.dumps(default)
        lines.append(f"{item.key} = {value}    [{item.type}]")
        if item.doc:
            lines += textwrap.wrap(item.doc, width, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


# --------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    folder = resources.files("plmkit") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_yaml(name_or_path: str | Path) -> dict[str, Any]:
    """Read a preset by name (``bert-small``) or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text = path.read_text(encoding="utf-8")
        source = str(path)
    else:
        res = resources.files("plmkit") / "configs" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(
                f"unknown preset {str(name_or_path)!r}; presets: {', '.join(preset_names())}"
            )
        text = res.read_text(encoding="utf-8")
        source = f"preset {name_or_path}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    return data


def model_config(name_or_path: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    """The ModelConfig of a preset or YAML file (its ``model:`` section), with overrides."""
    data = load_yaml(name_or_path)
    section = data.get("model", data)
    section = apply_overrides(dict(section), [o for o in overrides or []])
    return from_dict(ModelConfig, section, "model")


__all__ = [
    "REQUIRED",
    "ConfigError",
    "FieldDoc",
    "ModelConfig",
    "apply_overrides",
    "describe_fields",
    "field",
    "field_docs",
    "format_fields",
    "from_dict",
    "load_yaml",
    "model_config",
    "preset_names",
]
