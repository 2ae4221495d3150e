"""The FastAPI app: the page, /health, /metrics, /predict, /stream and /explain.

`create_app` builds it around one pipeline; the endpoints and the guarantees they keep are
listed in the package docstring (`plmkit.infer.server`). The OpenAI-compatible routes live in
`plmkit.infer.server.openai_api`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from plmkit.infer.base import NonFiniteScores
from plmkit.infer.control import Cancelled
from plmkit.infer.pipeline import Pipeline
from plmkit.infer.quantize import weight_format
from plmkit.infer.server import schemas
from plmkit.infer.server.limits import RequestError, ServerLimits, parse_json, short
from plmkit.infer.server.metrics import ServerMetrics
from plmkit.infer.server.runners import explain_support, runners
from plmkit.infer.server.worker import END, Job, Worker

log = logging.getLogger("plmkit.serve")
ENDPOINTS = ("/", "/health", "/metrics", "/predict", "/stream", "/explain", "/openapi.json", "/docs",
             "/v1/models", "/v1/completions", "/v1/chat/completions")
ERROR_LIMIT = 300
"""Most characters of an error message (a message never carries the whole input)."""


def index_html() -> str:
    """The web page, shipped as package data."""
    return (resources.files("plmkit.infer") / "static" / "index.html").read_text(encoding="utf-8")


def model_info(pipe: Pipeline) -> dict[str, Any]:
    cfg = pipe.model.config
    return {"arch": cfg.arch, "family": cfg.family, "head": pipe.model.task, "layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size, "parameters": pipe.model.num_parameters(),
            "labels": list((cfg.id2label or {}).values()), "device": str(pipe.device),
            "weights": weight_format(pipe.model), "position": cfg.position}


class ExplainRequest(BaseModel):
    """POST /explain: one input, which attention map to return, and the attribution target."""

    model_config = ConfigDict(extra="forbid", strict=True)
    inputs: str | schemas.TextPair | schemas.QuestionContext
    layer: int = Field(default=-1, ge=-256, le=255, description="layer of the attention map (negative: from the end)")
    head: int | None = Field(default=None, ge=0, le=255, description="one head (default: the mean of all heads)")
    target: str | int | None = Field(default=None, description="class to explain (default: the predicted one)")
    n_steps: int | None = Field(default=None, ge=1, le=1024, description="integrated-gradients steps")


class Served:
    """One served pipeline: its limits, options model, inference thread, metrics and admission count."""

    def __init__(self, pipe: Pipeline, limits: ServerLimits, *, batch_window: float, max_batch: int,
                 model_name: str, compile: bool) -> None:
        self.pipe, self.limits = pipe, limits
        self.task = pipe.task
        self.model_name = model_name
        self.compile = compile
        self.created = int(time.time())
        self.options = schemas.options_model(self.task, pipe.config.vocab_size, limits)
        self.metrics = ServerMetrics(ENDPOINTS)
        self.worker = Worker(runners(pipe, limits), batch_window=batch_window, max_batch=max_batch,
                             on_batch=self.metrics.on_batch)
        self.metrics.work.source = self.worker.work_done
        self.active = 0
        self._started = False

    # ---- admission and jobs ------------------------------------------------------------------
    @contextmanager
    def admitted(self):
        """Count a request in, or refuse it at once (429) when ``max_concurrent`` are in."""
        self.admit()
        try:
            yield
        finally:
            self.active -= 1

    def admit(self) -> None:
        if self.active >= self.limits.max_concurrent:
            raise RequestError(429, f"the server is busy: {self.active} requests are being answered, the limit is "
                                    f"{self.limits.max_concurrent} (--max-concurrent); retry later",
                               headers={"Retry-After": "1"})
        self.active += 1

    def submit(self, kind: str, payload: Any, options: dict[str, Any], *, size: int = 1, key: str | None = None,
               streaming: bool = False) -> Job:
        if not self._started:
            self.worker.start()
            self._started = True
        job = Job(kind, payload, options, size=size, key=key, deadline=time.monotonic() + self.limits.request_timeout,
                  loop=asyncio.get_running_loop(), streaming=streaming)
        self.worker.submit(job)
        self.metrics.queue.set(self.worker.queued)
        return job

    async def result(self, job: Job, request: Request) -> Any:
        """The job's result; its client leaving or the deadline passing cancels it (499 / 504)."""
        gone = asyncio.ensure_future(disconnected(request))
        try:
            done, _ = await asyncio.wait({job.future, gone}, timeout=max(0.0, job.deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if job.future in done:
            return unwrap(job.future, self.limits)
        job.cancel.set()
        if gone in done:
            raise RequestError(499, "the client closed the connection")
        raise deadline_error(self.limits)

    def generation_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """A generation request's options with the server's: capped default length, compile."""
        default = self.pipe.defaults.get("max_new_tokens", 64)
        options.setdefault("max_new_tokens", min(int(default), self.limits.max_new_tokens))
        if self.compile:
            options["compile"] = True
        return options

    def batch_key(self, kind: str, options: dict[str, Any]) -> str | None:
        """Jobs with equal keys may run as one call; a seeded generation always runs alone (reproducible)."""
        if self.task in schemas.GENERATION_TASKS and options.get("seed") is not None:
            return None
        return json.dumps([kind, options], sort_keys=True, default=str)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "task": self.task, "model_name": self.model_name, "model": model_info(self.pipe),
                "options": self.pipe.defaults, "option_fields": schemas.form_fields(self.options),
                "limits": asdict(self.limits), "compile": self.compile,
                "batching": {"window_seconds": self.worker.batch_window, "max_batch": self.worker.max_batch},
                "load": {"active": self.active, "queued": self.worker.queued},
                "explain": explain_support(self.pipe),
                "openai": self.task == "text-generation" and self.pipe.config.arch == "decoder"}


def unwrap(future: asyncio.Future, limits: ServerLimits) -> Any:
    """A finished job's result, its failure as a RequestError (4xx, or 500 for a bug)."""
    error = future.exception()
    if error is None:
        return future.result()
    if isinstance(error, RequestError):
        raise error
    if isinstance(error, Cancelled):
        if str(error) == "deadline":
            raise deadline_error(limits)
        raise RequestError(499, "the client closed the connection")
    if isinstance(error, NonFiniteScores):  # the model's fault, not the request's
        raise RequestError(500, short(str(error), ERROR_LIMIT))
    if isinstance(error, ValueError):
        raise RequestError(400, short(str(error), ERROR_LIMIT))
    raise RequestError(500, f"internal error ({type(error).__name__}); the server log has the details")


def deadline_error(limits: ServerLimits) -> RequestError:
    return RequestError(504, f"the request took longer than the server's limit of {limits.request_timeout:g} s "
                             "(--request-timeout)")


async def disconnected(request: Request) -> None:
    """Return when the client has closed the connection (its body must have been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def read_body(request: Request) -> Any:
    return parse_json(await request.body())


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response; a non-finite number in a result is a clear 500, not a broken connection."""
    try:
        return JSONResponse(content, status_code=status, headers=headers)
    except ValueError:
        return JSONResponse({"detail": "the model produced a non-finite score (NaN or infinity); its weights may "
                                       "be damaged"}, status_code=500)


def error_content(path: str, status: int, message: str) -> dict[str, Any]:
    """The error body: {"detail": ...}, or OpenAI's {"error": {...}} under /v1/."""
    message = short(message, ERROR_LIMIT)
    if path.startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        code = {429: "rate_limit_exceeded", 413: "request_too_large", 504: "timeout"}.get(status)
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return {"detail": message}


# --------------------------------------------------------------------------- the app


def create_app(pipe: Pipeline, limits: ServerLimits | None = None, *, batch_window: float = 0.01,
               max_batch: int = 32, model_name: str = "plmkit", compile: bool = False) -> FastAPI:
    """A FastAPI app serving `pipe`: see `plmkit.infer.server` for the endpoints and guarantees.

    `limits` bound each request (`ServerLimits`); requests with the same options arriving within
    `batch_window` seconds run as one batch of up to `max_batch` inputs. `model_name` is the id
    of the OpenAI-compatible routes; `compile` runs generation's decode step through torch.compile.
    """
    served = Served(pipe, limits or ServerLimits(), batch_window=batch_window, max_batch=max_batch,
                    model_name=model_name, compile=compile)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(served.worker.close)

    app = FastAPI(title=f"plmkit {served.task}", description="plmkit inference server", lifespan=lifespan)
    app.state.served = served
    page = index_html()

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> Response:
        return json_response(error_content(request.url.path, e.status, e.message), e.status, e.headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> Response:
        return json_response(served.health())

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        served.metrics.queue.set(served.worker.queued)
        return Response(served.metrics.render(), media_type=served.metrics.content_type)

    @app.post("/predict", openapi_extra=body_doc(served.options.__name__.replace("Options", "Request")),
              responses=ERROR_RESPONSES)
    async def predict(request: Request) -> Response:
        body = await read_body(request)
        inputs = schemas.check_inputs(served.task, body, served.limits)
        options = schemas.check_options(served.options, body, served.task)
        if served.task in schemas.GENERATION_TASKS:
            options = served.generation_options(options)
        items = inputs if isinstance(inputs, list) else [inputs]
        with served.admitted():
            job = served.submit("predict", items, options, size=len(items), key=served.batch_key("predict", options))
            outputs = await served.result(job, request)
        return json_response({"task": served.task, "outputs": outputs if isinstance(inputs, list) else outputs[0]})

    @app.post("/explain", openapi_extra=body_doc("ExplainRequest"), responses=ERROR_RESPONSES)
    async def explain(request: Request) -> Response:
        body = await read_body(request)
        if not isinstance(body, dict) or "inputs" not in body or isinstance(body["inputs"], list):
            raise RequestError(400, 'expected a JSON object {"inputs": <one input>, "layer", "head", "target", '
                                    '"n_steps"}')
        shape = "question-answering" if isinstance(body["inputs"], dict) and "question" in body["inputs"] else \
            "text-classification"  # a text, a text pair, or a question and its context
        schemas.check_inputs(shape, {"inputs": body["inputs"]}, served.limits)
        options = schemas.validate(ExplainRequest, body, "explain")
        payload = explain_payload(served.task, options.pop("inputs"))
        if (options.get("n_steps") or 0) > served.limits.max_explain_steps:
            raise RequestError(400, f"n_steps {options['n_steps']} is above this server's limit of "
                                    f"{served.limits.max_explain_steps} (--max-explain-steps)")
        with served.admitted():
            job = served.submit("explain", payload, options)
            return json_response(await served.result(job, request))

    if served.task == "text-generation":
        add_stream_route(app, served)
    if served.task == "text-generation" and pipe.config.arch == "decoder":
        from plmkit.infer.server.openai_api import add_openai_routes

        add_openai_routes(app, served)
    document_bodies(app, {served.options.__name__.replace("Options", "Request"): predict_model(served),
                          "ExplainRequest": ExplainRequest})
    app.add_middleware(BodyLimit, max_bytes=served.limits.max_body_bytes)
    app.add_middleware(served.metrics.middleware)
    return app


def explain_payload(task: str, inputs: Any) -> tuple[str, str | None]:
    """(text, pair) of an /explain input: a text, a text pair, or a question and its context."""
    if isinstance(inputs, schemas.QuestionContext):
        return inputs.question, inputs.context
    if isinstance(inputs, schemas.TextPair):
        if task not in ("text-classification", "feature-extraction"):
            raise RequestError(400, f"a text pair is not an input of {task}")
        return inputs.text, inputs.text_pair
    return inputs, None


def add_stream_route(app: FastAPI, served: Served) -> None:
    """POST /stream {"inputs": "<one prompt>", <generation options>}: the continuation as plain
    text, sent piece by piece while it is generated (greedy or sampling)."""
    @app.post("/stream", openapi_extra=body_doc("TextGenerationRequest"), responses=ERROR_RESPONSES,
              response_class=StreamingResponse)
    async def stream(request: Request) -> StreamingResponse:
        body = await read_body(request)
        prompt = schemas.check_inputs(served.task, body, served.limits)
        if not isinstance(prompt, str):
            raise RequestError(400, 'streaming takes one prompt: {"inputs": "<text>"}')
        options = served.generation_options(schemas.check_options(served.options, body, served.task))
        options.pop("return_full_text", None)
        stream = await Stream.start(served, request, prompt, options)
        return stream.response(text_of(stream.pieces()), "text/plain; charset=utf-8")


class Stream:
    """A streaming job from the request's side: its pieces, then a final dict (token counts,
    finish reason). `close` (idempotent) cancels the job and ends the admission; the response
    calls it however the stream ends."""

    def __init__(self, served: Served, job: Job, gone: asyncio.Future, first: Any) -> None:
        self.served, self.job, self.gone, self.first = served, job, gone, first
        self.closed = False

    @classmethod
    async def start(cls, served: Served, request: Request, prompt: str, options: dict[str, Any]) -> Stream:
        """Admit and queue a streaming job and wait for its first piece, so that errors are still 4xx."""
        served.admit()
        gone = asyncio.ensure_future(disconnected(request))
        try:
            job = served.submit("stream", prompt, options, streaming=True)
            first = await next_piece(job, gone, served.limits)
        except BaseException:
            gone.cancel()
            served.active -= 1
            raise
        return cls(served, job, gone, first)

    async def pieces(self) -> AsyncIterator[Any]:
        """The text pieces, then the final dict; the client leaving or the deadline passing ends it."""
        try:
            piece = self.first
            while piece is not END:
                yield piece
                piece = await next_piece(self.job, self.gone, self.served.limits)
            await asyncio.wait({self.job.future}, timeout=5.0)
            if self.job.future.done():
                yield unwrap(self.job.future, self.served.limits)
        except RequestError as e:  # after the first piece the status is sent: the stream just ends
            log.info("stream stopped: %s", e.message)
        finally:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.job.cancel.set()
            self.gone.cancel()
            self.served.active -= 1

    def response(self, content: AsyncIterator[str], media_type: str) -> Response:
        """A streaming response that closes this stream however it ends (even if never iterated)."""
        stream = self

        class Streaming(StreamingResponse):
            async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
                try:
                    await super().__call__(scope, receive, send)
                finally:
                    stream.close()

        return Streaming(content, media_type=media_type)


async def next_piece(job: Job, gone: asyncio.Future, limits: ServerLimits) -> Any:
    """The next piece of a streaming job, END; its error as a RequestError; cancels on leave/deadline."""
    assert job.pieces is not None
    get = asyncio.ensure_future(job.pieces.get())
    done, _ = await asyncio.wait({get, gone}, timeout=max(0.0, job.deadline - time.monotonic()),
                                 return_when=asyncio.FIRST_COMPLETED)
    if get in done:
        piece = get.result()
        if isinstance(piece, BaseException):
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(piece)
            unwrap(fut, limits)
        return piece
    get.cancel()
    job.cancel.set()
    if gone in done:
        raise RequestError(499, "the client closed the connection")
    raise deadline_error(limits)


async def text_of(pieces: AsyncIterator[Any]) -> AsyncIterator[str]:
    async for piece in pieces:
        if isinstance(piece, str):
            yield piece


# --------------------------------------------------------------------------- request size


class BodyLimit:
    """ASGI middleware: a request body larger than `max_bytes` is answered 413 before it is read whole.

    A Content-Length above the limit is refused without reading anything; a chunked body is
    read up to the limit. The body is then handed to the app from memory.
    """

    def __init__(self, app: Callable, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(scope, send, 400 if not length.isdigit() else 413)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, send, 413)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, send: Callable, status: int) -> None:
        message = (f"the request body is larger than the server's limit of {self.max_bytes} bytes (--max-body-bytes)"
                   if status == 413 else "the Content-Length header is not a number")
        payload = json.dumps(error_content(scope.get("path", ""), status, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


# --------------------------------------------------------------------------- OpenAPI


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for status, text in [(400, "invalid request"), (413, "body or input count over the limit"),
                         (429, "too many requests at once"), (504, "the request deadline passed")]}


def body_doc(name: str) -> dict[str, Any]:
    """openapi_extra for an endpoint whose JSON body is the component schema `name`."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}}


def predict_model(served: Served) -> type[BaseModel]:
    """The /predict body for the schema: "inputs" of the task plus its options (also under "options")."""
    fields = {name: (f.annotation, f) for name, f in served.options.model_fields.items()}
    return create_model(served.options.__name__.replace("Options", "Request"), __config__=ConfigDict(extra="forbid"),
                        inputs=(schemas.input_type(served.task), ...), options=(served.options | None, None), **fields)


def document_bodies(app: FastAPI, models: dict[str, type[BaseModel]]) -> None:
    """Add the request body models (and an Error model) to the app's OpenAPI components."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Error"] = {"type": "object", "properties": {"detail": {"type": "string"}}}
        for name, model in models.items():
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[name] = body
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["BodyLimit", "Served", "create_app", "index_html", "model_info"]
