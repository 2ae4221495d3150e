"""The shapes of requests: inputs per task, typed options, and the OpenAI-compatible bodies.

Options are checked strictly before any work starts: a string where a number belongs, an
unknown option, a value out of range (num_beams and max_new_tokens above the server's caps
included) is a `RequestError` (400) naming the field. Weight format and compilation are the
server's (``plmkit serve --dtype / --compile``): a request that sets them is refused.

Inputs are checked by hand (`check_inputs`) so that the messages say what was expected; the
pydantic models below also type them, for the OpenAPI schema (``/openapi.json``).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from plmkit.infer.generation import GenerationConfig
from plmkit.infer.server.limits import RequestError, ServerLimits, short

SERVER_CHOSEN = {"dtype": "--dtype", "compile": "--compile"}
"""Generation fields fixed when the server starts; a request may not set them."""
GENERATION_TASKS = ("text-generation", "summarization", "translation")
_STRICT = ConfigDict(extra="forbid", strict=True)
_MAX_STOP = 16
_CAPS = {"max_new_tokens": "--max-new-tokens", "min_new_tokens": "--max-new-tokens", "num_beams": "--max-beams",
         "max_tokens": "--max-new-tokens", "max_completion_tokens": "--max-new-tokens"}


# Pipeline options: (type, default, help). Their names must be the pipeline's `options` (tested).
PIPELINE_OPTIONS: dict[str, dict[str, tuple[Any, Any, str]]] = {
    "text-classification": {
        "top_k": (int | None, 1, "labels to list, best first (null: all)"),
        "max_length": (int | None, None, "tokens per input (default: the model's)"),
    },
    "token-classification": {
        "aggregation": (Literal["simple", "none"], "simple", "simple: entity spans; none: one entry per word"),
        "ignore_labels": (list[str] | None, ["O"], "tags left out with aggregation=none"),
        "max_length": (int | None, None, "tokens per input (default: the model's)"),
    },
    "question-answering": {
        "top_k": (int, 1, "answers to list, best first"),
        "max_length": (int, 384, "tokens per window of the context"),
        "doc_stride": (int | None, None, "tokens shared by consecutive windows (default: a quarter)"),
        "max_question_length": (int, 64, "tokens of the question kept"),
        "max_answer_length": (int, 30, "most tokens of an answer"),
        "n_best": (int, 20, "start and end candidates considered per window"),
        "null_threshold": (float | None, None, "answer \"\" when no-answer beats the best span by more "
                                               "(log-probability; null: always answer)"),
    },
    "fill-mask": {
        "top_k": (int, 5, "candidates per mask"),
        "max_length": (int | None, None, "tokens per input (default: the model's)"),
    },
    "feature-extraction": {
        "pooling": (Literal["mean", "cls"], "mean", "mean over tokens or the first token"),
        "normalize": (bool, False, "scale the vector to unit length"),
        "max_length": (int | None, None, "tokens per input (default: the model's)"),
    },
    "text-generation": {"return_full_text": (bool, True, "prompt + continuation (false: continuation only)")},
    "summarization": {"max_source_length": (int | None, None, "tokens of the source kept"),
                      "separator": (str, "\n", "decoder models: text between source and output")},
    "translation": {"max_source_length": (int | None, None, "tokens of the source kept"),
                    "separator": (str, "\n", "decoder models: text between source and output")},
}
_POSITIVE = {"top_k", "max_length", "max_question_length", "max_answer_length", "max_source_length", "n_best"}


# --------------------------------------------------------------------------- inputs


class TextPair(BaseModel):
    """A text and an optional second text (text-classification)."""

    model_config = _STRICT
    text: str
    text_pair: str | None = None


class QuestionContext(BaseModel):
    """A question about a context (question-answering)."""

    model_config = _STRICT
    question: str
    context: str


def input_type(task: str) -> Any:
    """The type of "inputs" for a task (for the schema): one input or a list of them."""
    one: Any = {"text-classification": str | TextPair, "question-answering": QuestionContext}.get(task, str)
    return one | list[one]


def check_inputs(task: str, body: Any, limits: ServerLimits) -> Any:
    """The "inputs" of a /predict body, checked: a RequestError names the first bad one.

    A list longer than ``max_inputs`` is a 413; a text longer than ``max_chars`` a 400.
    """
    if not isinstance(body, dict) or "inputs" not in body:
        raise RequestError(400, 'expected a JSON object {"inputs": ..., <options>}')
    inputs = body["inputs"]
    if isinstance(inputs, list):
        if not inputs:
            raise RequestError(400, '"inputs" is an empty list')
        if len(inputs) > limits.max_inputs:
            raise RequestError(413, f"{len(inputs)} inputs in one request; the limit is {limits.max_inputs} "
                                    "(--max-inputs)")
        for i, item in enumerate(inputs):
            _check_input(task, item, f"inputs[{i}]", limits)
    else:
        _check_input(task, inputs, "inputs", limits)
    return inputs


def _check_input(task: str, item: Any, where: str, limits: ServerLimits) -> None:
    if task == "question-answering":
        ok = isinstance(item, dict) and set(item) == {"question", "context"}
        expected = '{"question": <text>, "context": <text>}'
    elif task == "text-classification" and isinstance(item, dict):
        ok = set(item) in ({"text"}, {"text", "text_pair"}) and (item.get("text_pair") is None
                                                                 or isinstance(item["text_pair"], str))
        expected = 'a text or {"text": <text>, "text_pair": <text>}'
    else:
        ok = isinstance(item, str)
        expected = "a text" if task != "text-classification" else 'a text or {"text": ..., "text_pair": ...}'
    if ok and isinstance(item, dict):
        ok = all(isinstance(v, str) for k, v in item.items() if k != "text_pair")
    if not ok:
        raise RequestError(400, f"{where}: expected {expected}, got {_kind(item)}: {short(item, 60)}")
    for key, text in ([("", item)] if isinstance(item, str) else item.items()):
        if isinstance(text, str) and len(text) > limits.max_chars:
            name = f"{where}.{key}" if key else where
            raise RequestError(400, f"{name} has {len(text)} characters; the limit is {limits.max_chars} "
                                    "(--max-chars)")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a text", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


# --------------------------------------------------------------------------- options


def options_model(task: str, vocab_size: int, limits: ServerLimits) -> type[BaseModel]:
    """The pydantic model of a task's options (pipeline options, plus generation's for generation tasks)."""
    specs: dict[str, Any] = {}
    for name, (kind, default, doc) in PIPELINE_OPTIONS[task].items():
        bounds = {"ge": 1} if name in _POSITIVE else {"ge": 0} if name == "doc_stride" else {}
        if name == "top_k" and task == "fill-mask":
            bounds["le"] = vocab_size
        specs[name] = (kind, Field(default=default, description=doc, **bounds))
    if task in GENERATION_TASKS:
        specs.update(generation_fields(vocab_size, limits))
    return create_model(f"{_camel(task)}Options", __config__=_STRICT, **specs)


def generation_fields(vocab_size: int, limits: ServerLimits) -> dict[str, Any]:
    """`GenerationConfig` fields as pydantic fields, with the server's caps; dtype/compile left out."""
    hints = typing.get_type_hints(GenerationConfig)
    docs = attribute_docs(GenerationConfig)
    bounds: dict[str, dict[str, Any]] = {
        "max_new_tokens": {"ge": 1, "le": limits.max_new_tokens},
        "min_new_tokens": {"ge": 0, "le": limits.max_new_tokens},
        "temperature": {"ge": 0, "le": 100, "allow_inf_nan": False},
        "top_k": {"ge": 0},
        "top_p": {"gt": 0, "le": 1, "allow_inf_nan": False},
        "min_p": {"ge": 0, "le": 1, "allow_inf_nan": False},
        "num_beams": {"ge": 1, "le": limits.max_beams},
        "length_penalty": {"ge": -10, "le": 10, "allow_inf_nan": False},
        "repetition_penalty": {"ge": 0.01, "le": 100, "allow_inf_nan": False},
        "no_repeat_ngram_size": {"ge": 0, "le": 64},
        "seed": {"ge": 0, "le": 2**63 - 1},
    }
    kinds: dict[str, Any] = {
        "stop_token_ids": list[Annotated[int, Field(ge=0, lt=vocab_size)]] | None,
        "stop_strings": list[Annotated[str, Field(min_length=1, max_length=200)]],
    }
    out = {}
    for f in dataclasses.fields(GenerationConfig):
        if f.name in SERVER_CHOSEN:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        extra = {"max_length": _MAX_STOP} if f.name in kinds else {}
        out[f.name] = (kinds.get(f.name, hints[f.name]),
                       Field(default=default, description=docs.get(f.name), **bounds.get(f.name, {}), **extra))
    return out


def check_options(model: type[BaseModel], body: dict[str, Any], task: str) -> dict[str, Any]:
    """The options a /predict or /stream body sets (top level or under "options"), validated."""
    options = {k: v for k, v in body.items() if k != "inputs"}
    nested = options.pop("options", None)
    if nested is not None:
        if not isinstance(nested, dict):
            raise RequestError(400, '"options" must be a JSON object')
        options.update(nested)
    return validate(model, options, task)


def validate(model: type[BaseModel], data: dict[str, Any], task: str) -> dict[str, Any]:
    """The fields `data` sets, validated by `model`; a RequestError (400) names the first bad field."""
    for name, flag in SERVER_CHOSEN.items():
        if name in data:
            raise RequestError(400, f"{name} is chosen when the server starts (plmkit serve {flag}); "
                                    "a request cannot change it")
    try:
        parsed = model.model_validate(data)
    except ValidationError as e:
        raise RequestError(400, describe(e, model, task)) from None
    values = {name: getattr(parsed, name) for name in parsed.model_fields_set}
    temperature = values.get("temperature")
    if temperature is not None and 0 < temperature < 1e-2:
        raise RequestError(400, f"temperature must be 0 (greedy) or at least 0.01, got {temperature}")
    return values


def describe(error: ValidationError, model: type[BaseModel], task: str) -> str:
    """One line for a pydantic ValidationError: the first problems, never the whole input."""
    parts = []
    for err in error.errors(include_url=False, include_input=False)[:3]:
        loc = ".".join(str(x) for x in err["loc"] if not (isinstance(x, str) and "[" in x))
        if err["type"] == "extra_forbidden":
            valid = ", ".join(sorted(model.model_fields))
            parts.append(f"unknown option {short(loc, 60)} for {task}; valid options: {valid}")
        else:
            cap = _CAPS.get(loc) if err["type"] == "less_than_equal" else None
            parts.append(f"{short(loc, 60)}: {err['msg']}" + (f" (this server's limit, {cap})" if cap else ""))
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a dataclass's fields (its source's attribute docstrings)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def form_fields(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The options as the web page builds its form: name, type, default, bounds, choices, help."""
    schema = model.model_json_schema()
    out = []
    for name, prop in schema["properties"].items():
        variants = prop.get("anyOf", [prop])
        real = [v for v in variants if v.get("type") != "null"]
        first = real[0] if real else {}
        kind = "choice" if "enum" in first or "const" in first else first.get("type", "string")
        if kind == "array":
            kind = "list"
            entry_items = first.get("items", {}).get("type", "string")
        entry = {"name": name, "type": kind, "nullable": len(real) < len(variants), "default": prop.get("default"),
                 "help": prop.get("description", "")}
        if kind == "list":
            entry["items"] = entry_items
        if kind == "choice":
            entry["choices"] = [c for v in real for c in v.get("enum", [v.get("const")])]
        for bound in ("minimum", "maximum", "exclusiveMinimum"):
            if bound in first:
                entry[bound] = first[bound]
        out.append(entry)
    return out


def _camel(task: str) -> str:
    return "".join(part.capitalize() for part in task.split("-"))


# --------------------------------------------------------------------------- OpenAI-compatible bodies


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class _SamplingFields(BaseModel):
    """What /v1/completions and /v1/chat/completions share (OpenAI's names and defaults)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, description="new tokens (default: 16 for completions, "
                                                                   "the server's cap for chat)")
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False, description="default 1")
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False, description="default 1")
    n: int = Field(default=1, ge=1, description="completions per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(default=None,
                                                                                           max_length=_MAX_STOP)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, description="only 0 is supported")
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, description="only 0 is supported")
    user: str | None = None
    # plmkit extensions (as other OpenAI-compatible servers name them)
    top_k: int | None = Field(default=None, ge=0, description="plmkit: sample among the k most likely tokens")
    min_p: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False, description="plmkit: min-p filter")
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=100, allow_inf_nan=False,
                                             description="plmkit: CTRL repetition penalty")


class CompletionRequest(_SamplingFields):
    """POST /v1/completions (OpenAI's legacy completions)."""

    prompt: str | list[str]
    echo: bool = False
    logprobs: None = Field(default=None, description="not supported: null only")
    best_of: int | None = Field(default=None, ge=1, le=1, description="1 only")
    suffix: None = Field(default=None, description="not supported: null only")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatRequest(_SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = Field(default=None, description="false only")
    response_format: dict[str, Any] | None = Field(default=None, description='{"type": "text"} only')


__all__ = [
    "ChatMessage", "ChatRequest", "CompletionRequest", "GENERATION_TASKS", "PIPELINE_OPTIONS", "QuestionContext",
    "SERVER_CHOSEN", "TextPair", "attribute_docs", "check_inputs", "check_options", "describe", "form_fields",
    "generation_fields", "input_type", "options_model", "validate",
]
