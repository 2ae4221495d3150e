"""What one request may ask of the server, and reading a request body safely.

`ServerLimits` holds every bound the server enforces; each field is a `plmkit serve` flag
(``max_new_tokens`` -> ``--max-new-tokens``), printed when the server starts and shown in
``/health``. `read_json` turns a request body into JSON data or a `RequestError` (a 4xx answer):
invalid UTF-8, invalid JSON, NaN/Infinity, nesting too deep and lone surrogates are all 400s.
Error messages quote at most `QUOTE` characters of what the client sent.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, fields
from typing import Any

from plmkit.errors import UserError

MISSING = "plmkit serve needs FastAPI, uvicorn and prometheus_client; install them with: pip install 'plmkit[serve]'"
QUOTE = 120
"""Most characters of client input an error message quotes."""


class RequestError(UserError):
    """A request the server refuses: an HTTP status (4xx) and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _limit(default: float, doc: str) -> Any:
    return field(default=default, metadata={"help": doc})


@dataclass
class ServerLimits:
    """Bounds on the work one request can cause. Every field is a `plmkit serve` flag."""

    max_body_bytes: int = _limit(1_000_000, "largest request body in bytes (413 beyond, checked before it is read whole)")
    max_inputs: int = _limit(64, "most inputs (texts) in one request, and most completions (n) (413 beyond)")
    max_chars: int = _limit(20_000, "most characters in one text (400 beyond)")
    max_prompt_tokens: int = _limit(2048, "most tokens in one generation prompt (400 beyond)")
    max_new_tokens: int = _limit(256, "most new tokens one generation may ask for, whatever the model's positions")
    max_beams: int = _limit(4, "most beams of beam search (num_beams)")
    max_concurrent: int = _limit(8, "requests admitted at once (queued or running); more are answered 429 at once")
    request_timeout: float = _limit(60.0, "seconds a request may take, queue included (504 beyond; streams end)")
    max_explain_tokens: int = _limit(128, "most tokens of a text /explain takes")
    max_explain_steps: int = _limit(64, "most integrated-gradients steps of one /explain request")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UserError(f"--{flag(f.name)} must be a positive number, got {value!r}")

    def describe(self) -> str:
        """One line per limit, as `plmkit serve` prints them at start."""
        return "\n".join(f"  --{flag(f.name):<20} {getattr(self, f.name)}" for f in fields(self))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("limits per request")
        for f in fields(cls):
            kind = float if f.type in (float, "float") else int
            group.add_argument(f"--{flag(f.name)}", type=kind, default=f.default, metavar="N",
                               help=f"{f.metadata['help']} (default: {f.default})")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerLimits:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def flag(name: str) -> str:
    return name.replace("_", "-")


# --------------------------------------------------------------------------- request bodies


def short(text: Any, limit: int = QUOTE) -> str:
    """`text` (or its repr) cut to `limit` characters with a note of how much was left out."""
    s = text if isinstance(text, str) else repr(text)
    if len(s) <= limit:
        return s
    return f"{s[:limit]}... ({len(s) - limit} more characters)"


def parse_json(body: bytes) -> Any:
    """JSON data of a request body; a RequestError (400) says what is wrong and where."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"the request body is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    if not text.strip():
        raise RequestError(400, "the request body is empty; expected a JSON object")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise RequestError(400, "the JSON is nested too deeply") from None
    except ValueError as e:  # NaN / Infinity, or an integer with too many digits
        raise RequestError(400, f"invalid JSON: {short(str(e))}") from None
    check_unicode(data)
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_unicode(data: Any) -> None:
    """Raise RequestError (400) for a string (or key) holding a lone surrogate, naming where."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            _encodable(where, value)
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                _encodable(f"{where} key", k)
                stack.append((f"{where}.{k}" if where else str(k), v))


def _encodable(where: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        char = ord(text[e.start])
        raise RequestError(400, f"{short(where or 'the body', 60)}: lone surrogate U+{char:04X} at character "
                                f"{e.start}; text must be valid Unicode") from None


__all__ = ["MISSING", "QUOTE", "RequestError", "ServerLimits", "check_unicode", "parse_json", "short"]
