"""OpenAI-compatible routes for a served decoder: /v1/models, /v1/completions, /v1/chat/completions.

Existing OpenAI clients work against ``http://HOST:PORT/v1`` (any API key). The request and
response bodies follow OpenAI's wire format, streaming included (server-sent events: one
``data: {chunk}`` per piece, a last chunk with ``finish_reason``, then ``data: [DONE]``);
errors are ``{"error": {"message", "type", "param", "code"}}``.

Supported: ``prompt`` (a text or a list), ``messages``, ``max_tokens`` /
``max_completion_tokens`` (capped by ``--max-new-tokens``), ``temperature`` (default 1, as
OpenAI; 0 is greedy), ``top_p``, ``n``, ``stop``, ``seed``, ``stream``,
``stream_options.include_usage``, ``echo``; plmkit extensions ``top_k``, ``min_p`` and
``repetition_penalty``. Refused with a 400: ``logprobs``, ``suffix``, ``best_of`` > 1,
non-zero ``presence_penalty`` / ``frequency_penalty``, tools, non-text content, and
``n`` > 1 with ``stream``.

Chat template: plmkit models carry no chat template, so messages become plain text,

    System: <system or developer message>
    User: <message>
    Assistant: <message>
    ...
    Assistant:

and generation stops before a line starting with "User:" or "System:". The reply is the
continuation with its leading whitespace removed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from plmkit.infer.server import schemas
from plmkit.infer.server.app import (
    ERROR_RESPONSES, Served, Stream, body_doc, document_bodies, json_response, read_body,
)
from plmkit.infer.server.limits import RequestError

CHAT_STOPS = ["\nUser:", "\nSystem:"]
ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def add_openai_routes(app: FastAPI, served: Served) -> None:
    @app.get("/v1/models")
    async def models() -> Response:
        return json_response({"object": "list", "data": [model_card(served)]})

    @app.post("/v1/completions", openapi_extra=body_doc("CompletionRequest"), responses=ERROR_RESPONSES)
    async def completions(request: Request) -> Response:
        req = parse(schemas.CompletionRequest, await read_body(request))
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise RequestError(400, "prompt is an empty list")
        options = generation_options(served, req, default_tokens=16)
        return await answer(served, request, req, prompts, options, chat=False)

    @app.post("/v1/chat/completions", openapi_extra=body_doc("ChatRequest"), responses=ERROR_RESPONSES)
    async def chat_completions(request: Request) -> Response:
        req = parse(schemas.ChatRequest, await read_body(request))
        if req.logprobs:
            raise RequestError(400, "logprobs are not supported")
        if req.response_format not in (None, {"type": "text"}):
            raise RequestError(400, 'response_format: only {"type": "text"} is supported')
        options = generation_options(served, req, default_tokens=served.limits.max_new_tokens,
                                     max_tokens=req.max_completion_tokens or req.max_tokens)
        options["stop_strings"] = list(dict.fromkeys(options.get("stop_strings", []) + CHAT_STOPS))
        return await answer(served, request, req, [chat_prompt(req.messages)], options, chat=True)

    document_bodies(app, {"CompletionRequest": schemas.CompletionRequest, "ChatRequest": schemas.ChatRequest})


def model_card(served: Served) -> dict[str, Any]:
    return {"id": served.model_name, "object": "model", "created": served.created, "owned_by": "plmkit"}


def parse(model: type[BaseModel], body: Any) -> Any:
    """The validated request; a RequestError (400) names the first bad field."""
    if not isinstance(body, dict):
        raise RequestError(400, "expected a JSON object")
    for name, flag in schemas.SERVER_CHOSEN.items():
        if name in body:
            raise RequestError(400, f"{name} is chosen when the server starts (plmkit serve {flag}); "
                                    "a request cannot change it")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        message = schemas.describe(e, model, model.__name__).replace("unknown option", "unknown field")
        raise RequestError(400, message) from None


def generation_options(served: Served, req: Any, default_tokens: int, max_tokens: int | None = None) -> dict[str, Any]:
    """plmkit generation options from OpenAI fields (OpenAI's defaults: temperature 1, top_p 1)."""
    if req.presence_penalty or req.frequency_penalty:
        raise RequestError(400, "presence_penalty and frequency_penalty are not supported (use repetition_penalty)")
    max_tokens = max_tokens if max_tokens is not None else getattr(req, "max_tokens", None)
    limit = served.limits.max_new_tokens
    if max_tokens is not None and max_tokens > limit:
        raise RequestError(400, f"max_tokens {max_tokens} is above this server's limit of {limit} (--max-new-tokens)")
    temperature = 1.0 if req.temperature is None else req.temperature
    options: dict[str, Any] = {"max_new_tokens": min(max_tokens or default_tokens, limit)}
    if temperature == 0:
        options["do_sample"] = False
    else:
        options.update(do_sample=True, temperature=max(temperature, 0.01))
        for name in ("top_p", "top_k", "min_p"):
            if getattr(req, name) is not None:
                options[name] = getattr(req, name)
    if req.repetition_penalty is not None:
        options["repetition_penalty"] = req.repetition_penalty
    if req.seed is not None:
        options["seed"] = req.seed
    if req.stop:
        options["stop_strings"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if served.compile:
        options["compile"] = True
    return options


def chat_prompt(messages: list[schemas.ChatMessage]) -> str:
    """The plain-text chat template (see the module docstring)."""
    lines = [f"{ROLE_NAMES[m.role]}: {message_text(m)}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def message_text(message: schemas.ChatMessage) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise RequestError(400, f"message content: only text parts are supported, got type {part.get('type')!r}")
        texts.append(part["text"])
    return "".join(texts)


def finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


# --------------------------------------------------------------------------- answering


async def answer(served: Served, request: Request, req: Any, prompts: list[str], options: dict[str, Any],
                 chat: bool) -> Response:
    n = req.n
    total = len(prompts) * n
    if total > served.limits.max_inputs:
        raise RequestError(413, f"{len(prompts)} prompts x n={n} = {total} completions; the limit is "
                                f"{served.limits.max_inputs} (--max-inputs)")
    for i, prompt in enumerate(prompts):
        if len(prompt) > served.limits.max_chars:
            raise RequestError(400, f"prompt {i} has {len(prompt)} characters; the limit is {served.limits.max_chars} "
                                    "(--max-chars)")
    kind = "chat.completion" if chat else "text_completion"
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    if req.stream:
        if total > 1:
            raise RequestError(400, "streaming returns one completion: use one prompt and n=1")
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        stream = await Stream.start(served, request, prompts[0], options)
        events = sse(served, stream, ident, chat, echo=prompts[0] if getattr(req, "echo", False) else None,
                     include_usage=include_usage)
        return stream.response(events, "text/event-stream")
    expanded = [p for p in prompts for _ in range(n)]
    with served.admitted():
        job = served.submit("complete", expanded, options, size=len(expanded), key=served.batch_key("complete", options))
        results = await served.result(job, request)
    choices = []
    for i, (prompt, r) in enumerate(zip(expanded, results)):
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": r["text"].lstrip()},
                            "logprobs": None, "finish_reason": finish_reason(r["finish_reason"])})
        else:
            text = prompt + r["text"] if req.echo else r["text"]
            choices.append({"index": i, "text": text, "logprobs": None,
                            "finish_reason": finish_reason(r["finish_reason"])})
    prompt_tokens = sum(r["prompt_tokens"] for r in results[::n])
    completion_tokens = sum(r["completion_tokens"] for r in results)
    return json_response({"id": ident, "object": kind, "created": int(time.time()), "model": served.model_name,
                          "choices": choices, "usage": usage(prompt_tokens, completion_tokens)})


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def sse(served: Served, stream: Stream, ident: str, chat: bool, echo: str | None,
              include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> str:
        chunk = {"id": ident, "object": kind, "created": created, "model": served.model_name,
                 "choices": [] if choice is None else [{"index": 0, **choice}], **(extra or {})}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def delta(text: str, reason: str | None = None) -> dict[str, Any]:
        if chat:
            return {"delta": {"content": text} if text else {}, "logprobs": None, "finish_reason": reason}
        return {"text": text, "logprobs": None, "finish_reason": reason}

    if chat:
        yield event({"delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None})
    elif echo:
        yield event(delta(echo))
    started = not chat
    final: dict[str, Any] | None = None
    async for piece in stream.pieces():
        if isinstance(piece, dict):
            final = piece
            continue
        if not started:
            piece = piece.lstrip()
            if not piece:
                continue
            started = True
        yield event(delta(piece))
    if final is None:  # stopped early (deadline): say so in OpenAI's error shape
        yield f"data: {json.dumps({'error': {'message': 'the stream was stopped', 'type': 'server_error'}})}\n\n"
    else:
        yield event(delta("", finish_reason(final["finish_reason"])))
        if include_usage:
            yield event(None, {"usage": usage(final["prompt_tokens"], final["completion_tokens"])})
    yield "data: [DONE]\n\n"


__all__ = ["CHAT_STOPS", "add_openai_routes", "chat_prompt"]
