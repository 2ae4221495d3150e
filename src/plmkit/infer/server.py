"""`plmkit serve`: a model behind a small HTTP API and a web page.

    plmkit serve runs/sst2 --port 8000
    curl -s localhost:8000/predict -H 'content-type: application/json' \\
         -d '{"inputs": ["a gripping, funny film"], "top_k": 2}'

Endpoints:
    GET  /         the web page (static/index.html: a text box, a button, the result rendered)
    GET  /health   {"status": "ok", "task", "model": {...}, "options": {...}}
    POST /predict  {"inputs": <one input or a list>, <task options>} -> {"task", "outputs"}
                   an input the pipeline rejects (or an unknown option) is a 400 with "detail".
    POST /stream   text-generation only: {"inputs": "<prompt>", <options>} -> the continuation
                   as plain text, streamed while it is generated.

FastAPI and uvicorn are optional extras: ``pip install 'plmkit[serve]'``.
"""

from __future__ import annotations

import argparse
import threading
from importlib import resources
from typing import TYPE_CHECKING, Any

from plmkit.infer.pipeline import PIPELINES, Pipeline, pipeline

if TYPE_CHECKING:
    from fastapi import FastAPI

_MISSING = "plmkit serve needs FastAPI and uvicorn; install them with: pip install 'plmkit[serve]'"


def _fastapi():
    try:
        import fastapi
    except ModuleNotFoundError as e:
        raise ValueError(_MISSING) from e
    return fastapi


def index_html() -> str:
    """The web page, shipped as package data."""
    return (resources.files("plmkit.infer") / "static" / "index.html").read_text(encoding="utf-8")


def model_info(pipe: Pipeline) -> dict[str, Any]:
    cfg = pipe.model.config
    return {"arch": cfg.arch, "family": cfg.family, "head": pipe.model.task, "layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size, "parameters": pipe.model.num_parameters(),
            "labels": list((cfg.id2label or {}).values()), "device": str(pipe.device)}


def create_app(pipe: Pipeline, max_inputs: int = 256) -> FastAPI:
    """A FastAPI app serving `pipe` (see the module docstring for the endpoints).

    Requests run one at a time through the pipeline (a lock), each batched internally;
    a request with more than `max_inputs` inputs is refused with 413.
    """
    fastapi = _fastapi()
    from fastapi.responses import HTMLResponse

    app = fastapi.FastAPI(title=f"plmkit {pipe.task}", description="plmkit inference server")
    lock = threading.Lock()
    page = index_html()

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "task": pipe.task, "model": model_info(pipe), "options": pipe.defaults}

    @app.post("/predict")
    def predict(body: Any = fastapi.Body(...)) -> dict[str, Any]:  # noqa: B008  (FastAPI's idiom)
        inputs, options = _parse_request(body, fastapi.HTTPException)
        if isinstance(inputs, list) and len(inputs) > max_inputs:
            raise fastapi.HTTPException(413, f"{len(inputs)} inputs in one request; the limit is {max_inputs}")
        try:
            with lock:
                outputs = pipe(inputs, **options)
        except ValueError as e:
            raise fastapi.HTTPException(400, str(e)) from None
        return {"task": pipe.task, "outputs": outputs}

    if pipe.task == "text-generation":
        _add_stream(app, pipe, lock)
    return app


def _add_stream(app: FastAPI, pipe: Pipeline, lock: threading.Lock) -> None:
    """POST /stream {"inputs": "<one prompt>", <generation options>}: the continuation as plain
    text, sent piece by piece while it is generated (greedy or sampling)."""
    fastapi = _fastapi()
    from fastapi.responses import StreamingResponse

    from plmkit.infer.generation import stream_text

    @app.post("/stream")
    def stream(body: Any = fastapi.Body(...)) -> StreamingResponse:  # noqa: B008
        prompt, options = _parse_request(body, fastapi.HTTPException)
        if not isinstance(prompt, str):
            raise fastapi.HTTPException(400, 'streaming takes one prompt: {"inputs": "<text>"}')
        options.pop("return_full_text", None)
        pieces = stream_text(pipe.model, pipe.tokenizer, prompt, **{**_generation_defaults(pipe), **options})
        try:  # the first piece surfaces option errors while a 400 can still be sent
            with lock:
                first = next(pieces, "")
        except ValueError as e:
            raise fastapi.HTTPException(400, str(e)) from None

        def chunks():
            yield first
            while True:
                with lock:
                    piece = next(pieces, None)
                if piece is None:
                    return
                yield piece

        return StreamingResponse(chunks(), media_type="text/plain; charset=utf-8")


def _generation_defaults(pipe: Pipeline) -> dict[str, Any]:
    return {k: v for k, v in pipe.defaults.items() if k not in pipe.options}


def _parse_request(body: Any, error: type[Exception]) -> tuple[Any, dict[str, Any]]:
    """(inputs, options) of a request body; a malformed body is a 400."""
    if not isinstance(body, dict) or "inputs" not in body:
        raise error(400, 'expected a JSON object {"inputs": ..., <options>}')
    inputs = body["inputs"]
    if isinstance(inputs, list) and not inputs:
        raise error(400, '"inputs" is an empty list')
    options = {k: v for k, v in body.items() if k != "inputs"}
    nested = options.pop("options", None)
    if nested is not None:
        if not isinstance(nested, dict):
            raise error(400, '"options" must be a JSON object')
        options.update(nested)
    return inputs, options


# --------------------------------------------------------------------------- command line


def cli_configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="model directory (config.json, model.safetensors, tokenizer) or fine-tuning run")
    parser.add_argument("--task", default="auto", choices=["auto", *PIPELINES],
                        help="pipeline task (default: from the checkpoint's head)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="autocast dtype")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-inputs", type=int, default=256, help="most inputs in one request")


def cli_run(args: argparse.Namespace) -> int:
    _fastapi()
    try:
        import uvicorn
    except ModuleNotFoundError as e:
        raise ValueError(_MISSING) from e
    pipe = pipeline(args.task, args.run_dir, device=args.device, batch_size=args.batch_size, dtype=args.dtype)
    print(f"serving {args.run_dir} as {pipe.task} on http://{args.host}:{args.port}/")
    uvicorn.run(create_app(pipe, max_inputs=args.max_inputs), host=args.host, port=args.port, log_level="info")
    return 0


__all__ = ["cli_configure", "cli_run", "create_app", "index_html", "model_info"]
