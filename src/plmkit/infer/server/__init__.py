"""`plmkit serve`: a model behind an HTTP API, an OpenAI-compatible API and a web page.

    plmkit serve runs/sst2 --port 8000 --labels negative,positive
    curl -s localhost:8000/predict -H 'content-type: application/json' \\
         -d '{"inputs": ["a gripping, funny film"], "top_k": 2}'
    plmkit serve runs/gpt --dtype int8          # then any OpenAI client on http://localhost:8000/v1

Endpoints:
    GET  /          the web page (static/index.html): inputs, the options as form fields, one card
                    per result showing its input, streamed generation, and the explanation view
    GET  /health    task, model, default options and their form fields, limits, batching, load
    GET  /metrics   Prometheus text: requests by endpoint and status, latency, in flight, queue,
                    generated tokens, inference steps, batch sizes, cancellations
    POST /predict   {"inputs": <one input or a list>, <task options>} -> {"task", "outputs"}
    POST /stream    text-generation: {"inputs": "<prompt>", <options>} -> the continuation as
                    plain text, streamed while it is generated
    POST /explain   {"inputs": <one input>, "layer", "head", "target", "n_steps"} -> the tokens, an
                    attention map (one layer, one head or their mean) and, for a classifier with
                    fp32 weights, integrated-gradients token attributions
    GET  /v1/models, POST /v1/completions, POST /v1/chat/completions
                    OpenAI-compatible, for decoders (see `plmkit.infer.server.openai_api`)
    GET  /openapi.json, /docs   the schema of every body above

What the server guarantees (docs/reliability.md lists the test that proves each):
- Bounded work per request, chosen by the operator and never by a client (`ServerLimits`, each a
  flag): body size (413, refused before the body is read whole), inputs per request (413),
  characters per text and tokens per prompt (400), max_new_tokens and num_beams caps (400; the
  cap holds for rotary models too), a deadline (504; a stream just ends), and at most
  ``--max-concurrent`` requests admitted at once: more are answered 429 at once, never queued.
- Weight format (``--dtype`` fp32/bf16/int8/int4) and ``--compile`` are fixed at start; a
  request that sets them is a 400.
- Every bad request is a 4xx with a JSON message that quotes at most a short piece of the input:
  invalid JSON or UTF-8, lone surrogates, NaN, unknown options, wrong types, values out of range.
- Inference runs on one thread beside the event loop, so /health and /metrics answer while long
  work runs. A client that disconnects cancels its work (streaming or not) at the next forward
  batch or decode step; so does the deadline.
- Requests with the same options that arrive within ``--batch-window-ms`` run as one batch of up
  to ``--max-batch`` inputs; each request gets its own results and its own errors.

FastAPI, uvicorn and prometheus_client are optional extras: ``pip install 'plmkit[serve]'``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from plmkit.infer.pipeline import PIPELINES, Pipeline, pipeline
from plmkit.infer.quantize import DTYPES, prepare_for_inference
from plmkit.infer.server.limits import MISSING, RequestError, ServerLimits

_FROM_APP = ("create_app", "index_html", "model_info")


def __getattr__(name: str) -> Any:
    """create_app, index_html and model_info, imported on first use (they need the serve extra)."""
    if name not in _FROM_APP:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module("plmkit.infer.server.app")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("plmkit"):
            raise
        raise ValueError(MISSING) from e
    return getattr(module, name)


def cli_configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="model directory (config.json, model.safetensors, tokenizer) or fine-tuning run")
    parser.add_argument("--task", default="auto", choices=["auto", *PIPELINES],
                        help="pipeline task (default: from the checkpoint's head)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=DTYPES,
                        help="weight format, fixed for the server's life: fp32, bf16, or int8 / int4 (CPU) "
                             "(default: the weights as saved)")
    parser.add_argument("--compile", action="store_true", help="torch.compile generation's decode step")
    parser.add_argument("--labels", default=None, metavar="NAME,NAME",
                        help="class names in id order, when the checkpoint's are bare ids (classification, NER)")
    parser.add_argument("--model-name", default=None, help="model id of the OpenAI-compatible API "
                                                           "(default: the run folder's name)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per forward pass (default: %(default)s)")
    parser.add_argument("--batch-window-ms", type=float, default=10.0,
                        help="how long the first request waits for others to batch with (default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=32,
                        help="most inputs of requests batched together (default: %(default)s)")
    ServerLimits.add_arguments(parser)


def cli_run(args: argparse.Namespace) -> int:
    create_app = __getattr__("create_app")
    try:
        import uvicorn
    except ModuleNotFoundError as e:
        raise ValueError(MISSING) from e
    limits = ServerLimits.from_args(args)
    pipe = pipeline(args.task, args.run_dir, device=args.device, batch_size=args.batch_size)
    if args.labels is not None:
        rename_labels(pipe, args.labels)
    if args.dtype is not None:
        prepare_for_inference(pipe.model, args.dtype)
    if args.compile and pipe.task != "text-generation":
        raise ValueError(f"--compile applies to text generation's decode step, not to {pipe.task}")
    if args.batch_window_ms < 0 or args.max_batch < 1:
        raise ValueError("--batch-window-ms must be >= 0 and --max-batch >= 1")
    name = args.model_name or Path(args.run_dir).resolve().name
    app = create_app(pipe, limits, batch_window=args.batch_window_ms / 1000, max_batch=args.max_batch,
                     model_name=name, compile=args.compile)
    info = __getattr__("model_info")(pipe)
    print(f"serving {args.run_dir} as {pipe.task} ({info['weights']} weights on {info['device']}"
          f"{', compiled' if args.compile else ''}) on http://{args.host}:{args.port}/")
    print(f"batching: up to {args.max_batch} inputs within {args.batch_window_ms:g} ms; limits per request:")
    print(limits.describe(), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def rename_labels(pipe: Pipeline, names: str) -> None:
    """Name the model's classes (``--labels a,b,c``): one name per class, in id order."""
    labels = [n.strip() for n in names.split(",")]
    count = pipe.model.config.num_labels
    if pipe.task not in ("text-classification", "token-classification"):
        raise ValueError(f"--labels names classes of a classifier; this server runs {pipe.task}")
    if len(labels) != count or not all(labels) or len(set(labels)) != len(labels):
        raise ValueError(f"--labels needs {count} distinct non-empty names (the model has {count} classes), "
                         f"got {len(labels)}: {names!r}")
    pipe.model.config.id2label = dict(enumerate(labels))


__all__ = ["RequestError", "ServerLimits", "cli_configure", "cli_run", "create_app", "index_html", "model_info",
           "rename_labels"]
