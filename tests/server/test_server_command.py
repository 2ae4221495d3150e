"""`plmkit serve` as a user runs it: a saved model, the weight format and limits given as flags,
printed at start and shown in /health, then answers over HTTP; stopped with SIGINT."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import TINY

from plmkit.config import model_config
from plmkit.models import build_model

pytestmark = pytest.mark.slow
SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_prints_its_limits_and_serves(tmp_path, gpt_tokenizer):
    torch.manual_seed(0)
    model = build_model(model_config("gpt-tiny", TINY), "causal-lm")
    model.save_pretrained(tmp_path / "gpt", tokenizer=gpt_tokenizer)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "plmkit.cli", "serve", str(tmp_path / "gpt"), "--port", str(port),
                             "--dtype", "int8", "--max-new-tokens", "7", "--max-concurrent", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert health["model"]["weights"] == "int8" and health["limits"]["max_new_tokens"] == 7
        assert health["limits"]["max_concurrent"] == 3 and health["model_name"] == "gpt"
        out = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "Hi", "max_tokens": 7}).json()
        assert out["model"] == "gpt" and out["usage"]["completion_tokens"] <= 7
        refused = httpx.post(f"http://127.0.0.1:{port}/predict", json={"inputs": "Hi", "max_new_tokens": 8})
        assert refused.status_code == 400
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert "int8 weights" in output
    assert re.search(r"--max-new-tokens +7\n", output) and re.search(r"--max-concurrent +3\n", output)
