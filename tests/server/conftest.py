"""Servers on 127.0.0.1 for the server tests: tiny random models behind uvicorn in a thread.

Every server binds an ephemeral loopback port and stops at the end of its test (or module).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from plmkit.config import model_config  # noqa: E402
from plmkit.data.tokenizer import Tokenizer  # noqa: E402
from plmkit.infer.pipeline import pipeline  # noqa: E402
from plmkit.infer.server import ServerLimits, create_app  # noqa: E402
from plmkit.models import build_model  # noqa: E402

TINY = ["hidden_size=32", "num_heads=2", "intermediate_size=64", "num_layers=2", "max_positions=64"]
NER_TAGS = ["O", "B-LOC", "I-LOC"]


class LiveServer:
    """A uvicorn server for `app` on an ephemeral 127.0.0.1 port, in a daemon thread."""

    def __init__(self, app) -> None:
        self.app = app
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30), **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        """The current value of one sample of /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


@contextmanager
def serving(pipe, **app_kwargs) -> Iterator[LiveServer]:
    server = LiveServer(create_app(pipe, **app_kwargs))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def bert_tokenizer(shared_data: Path) -> Tokenizer:
    return Tokenizer.load(shared_data / "vocab" / "bert-base-uncased-vocab.txt")


@pytest.fixture(scope="session")
def gpt_tokenizer(shared_data: Path) -> Tokenizer:
    return Tokenizer.load(shared_data / "vocab" / "gpt2-vocab.json", merges=shared_data / "vocab" / "gpt2-merges.txt")


def classifier_pipe(tokenizer: Tokenizer):
    torch.manual_seed(0)
    model = build_model(model_config("bert-tiny", TINY + ["id2label={0: negative, 1: positive}"]),
                        "sequence-classification")
    return pipeline("text-classification", model, tokenizer=tokenizer)


def ner_pipe(tokenizer: Tokenizer):
    """A token classifier that tags every word B-LOC (its bias says so), so every word is an entity."""
    torch.manual_seed(0)
    labels = "{" + ", ".join(f"{i}: {t}" for i, t in enumerate(NER_TAGS)) + "}"
    model = build_model(model_config("bert-tiny", TINY + [f"id2label={labels}"]), "token-classification")
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 50.0, 0.0]))
    return pipeline("token-classification", model, tokenizer=tokenizer)


def fill_mask_pipe(tokenizer: Tokenizer):
    torch.manual_seed(0)
    return pipeline("fill-mask", build_model(model_config("bert-tiny", TINY), "masked-lm"), tokenizer=tokenizer)


def generator_pipe(tokenizer: Tokenizer, *extra: str, **defaults):
    """A tiny GPT with rotary positions (no position limit of its own)."""
    torch.manual_seed(0)
    model = build_model(model_config("gpt-tiny", TINY + ["position=rotary", *extra]), "causal-lm")
    return pipeline("text-generation", model, tokenizer=tokenizer, **defaults)


def limits(**kwargs) -> ServerLimits:
    return ServerLimits(**kwargs)


def wait_until(condition, timeout: float = 10.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()
