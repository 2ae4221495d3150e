"""A hostile client over real HTTP: every bad request is a 4xx with a short JSON message, and
the limits hold (body size, inputs, characters, tokens, max_new_tokens, num_beams, types, Unicode)."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import classifier_pipe, generator_pipe, limits, serving


@pytest.fixture(scope="module")
def clf(bert_tokenizer):
    with serving(classifier_pipe(bert_tokenizer), limits=limits(max_body_bytes=20_000, max_inputs=4, max_chars=500)) as s:
        yield s


@pytest.fixture(scope="module")
def gen(gpt_tokenizer):
    pipe = generator_pipe(gpt_tokenizer, max_new_tokens=4)
    with serving(pipe, limits=limits(max_new_tokens=16, max_beams=2, max_prompt_tokens=20, max_chars=2000)) as s:
        yield s


def raw(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict]:
    """Send raw bytes; the status and JSON body of the answer (read by its Content-Length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    return int(head.split(b" ")[1]), json.loads(body)


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n").encode() + body


def test_a_body_over_the_limit_is_refused_before_it_is_read(clf):
    # The header announces 50 MB; only 1 kB follows, and the server answers without waiting for the rest.
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 50000000\r\n\r\n"
    status, body = raw(clf.port, head + b"{" * 1000, timeout=5)
    assert status == 413 and "--max-body-bytes" in body["detail"] and "20000" in body["detail"]
    # The same for a chunked body without a length: refused once 20 kB have arrived.
    chunk = b"x" * 8000
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    status, body = raw(clf.port, head + chunked)
    assert status == 413


@pytest.mark.parametrize("body, words", [
    (b'{"inputs": "\xff\xfe broken"}', "not valid UTF-8"),
    (b'{"inputs": "a \\ud800 b"}', "lone surrogate U+D800"),
    (b'{"inputs": ["ok", "\\udfff"]}', "inputs[1]: lone surrogate"),
    (b'{"inputs": "x", "top_k": NaN}', "NaN is not a JSON number"),
    (b'{"inputs": "x",', "invalid JSON"),
    (b'', "empty"),
    (b'[' * 100_00 + b']' * 100_00, "nested too deeply"),
    (b'"just a string"', "expected a JSON object"),
])
def test_invalid_bytes_json_and_unicode_are_400(clf, body, words):
    status, answer = raw(clf.port, post("/predict", body))
    assert status == 400, answer
    assert words in answer["detail"]


@pytest.mark.parametrize("body, status, words", [
    ({"inputs": ["a"] * 5}, 413, "limit is 4 (--max-inputs)"),
    ({"inputs": "x" * 501}, 400, "501 characters; the limit is 500"),
    ({"inputs": {"text": "a", "text_pair": "b" * 600}}, 400, "inputs.text_pair has 600 characters"),
    ({"inputs": "a", "top_k": "2"}, 400, "top_k: Input should be a valid integer"),
    ({"inputs": "a", "top_k": 0}, 400, "top_k: Input should be greater than or equal to 1"),
    ({"inputs": "a", "top_k": 1.5}, 400, "top_k"),
    ({"inputs": "a", "max_length": [1]}, 400, "max_length"),
    ({"inputs": "a", "options": "top_k=2"}, 400, '"options" must be a JSON object'),
    ({"inputs": "a", "dtype": "int8"}, 400, "chosen when the server starts (plmkit serve --dtype)"),
    ({"inputs": "a", "options": {"compile": True}}, 400, "--compile"),
    ({"inputs": 5}, 400, "expected a text"),
    ({"inputs": [{"text": 1}]}, 400, "inputs[0]: expected a text"),
    ({"inputs": [None]}, 400, "inputs[0]"),
])
def test_bad_options_and_inputs_are_4xx_naming_the_field(clf, body, status, words):
    with clf.client() as client:
        answer = client.post("/predict", json=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert words in answer.json()["detail"]


def test_errors_never_echo_the_whole_input(clf):
    big = {"nested": ["y" * 5000] * 3}
    with clf.client() as client:
        answers = [client.post("/predict", json={"inputs": [big]}),
                   client.post("/predict", json={"inputs": "a", "top_kk": "z" * 10_000}),
                   client.post("/predict", json={"inputs": "a", "z" * 10_000: 1})]
    for answer in answers:
        assert answer.status_code == 400
        assert len(answer.json()["detail"]) < 400, answer.json()["detail"][:100]


def test_generation_caps_hold_for_a_rotary_model(gen):
    with gen.client() as client:
        too_long = client.post("/predict", json={"inputs": "Once", "max_new_tokens": 100_000})
        beams = client.post("/predict", json={"inputs": "Once", "num_beams": 64})
        prompt = client.post("/predict", json={"inputs": "word " * 50})
        stream = client.post("/stream", json={"inputs": "word " * 50})
        stop_ids = client.post("/predict", json={"inputs": "a", "stop_token_ids": [10**9]})
        penalty = client.post("/predict", json={"inputs": "a", "length_penalty": 1e308, "num_beams": 2})
        seed = client.post("/predict", json={"inputs": "a", "seed": 2**80})
        ok = client.post("/predict", json={"inputs": "Once", "max_new_tokens": 16, "num_beams": 2})
    assert too_long.status_code == 400 and "(this server's limit, --max-new-tokens)" in too_long.json()["detail"]
    assert beams.status_code == 400 and "--max-beams" in beams.json()["detail"]
    assert prompt.status_code == 400 and "the limit is 20 (--max-prompt-tokens)" in prompt.json()["detail"]
    assert stream.status_code == 400 and "--max-prompt-tokens" in stream.json()["detail"]
    for answer in (stop_ids, penalty, seed):
        assert answer.status_code == 400, answer.text
    assert ok.status_code == 200 and ok.json()["outputs"]["finish_reason"] in ("length", "stop_token")
    assert gen.metric("plmkit_requests_total", endpoint="/predict", status="500") == 0


def test_health_shows_the_limits_and_the_fixed_weights(gen):
    health = httpx_get(gen, "/health")
    assert health["limits"]["max_new_tokens"] == 16 and health["limits"]["max_beams"] == 2
    assert health["model"]["weights"] == "fp32" and health["compile"] is False
    names = {f["name"] for f in health["option_fields"]}
    assert {"max_new_tokens", "temperature", "num_beams", "return_full_text"} <= names
    assert not names & {"dtype", "compile"}


def httpx_get(server, path: str) -> dict:
    with server.client() as client:
        return client.get(path).json()
