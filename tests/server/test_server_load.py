"""Over real HTTP: a client that leaves stops its work, deadlines hold, 20 clients at once meet
the concurrency limit (429 at once) while /health stays fast, and requests that arrive together
are batched with their own results and errors."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from conftest import fill_mask_pipe, generator_pipe, limits, serving, wait_until

LONG = {"max_new_tokens": 3000, "stop_token_ids": [], "do_sample": False}
"""A generation of the tiny rotary GPT that takes seconds: no stop token, no position limit."""


@pytest.fixture(scope="module")
def gen(gpt_tokenizer):
    pipe = generator_pipe(gpt_tokenizer)
    with serving(pipe, limits=limits(max_new_tokens=3000, max_concurrent=4, request_timeout=30)) as s:
        yield s


def send_and_leave(port: int, path: str, body: dict, server) -> None:
    """Send a request, wait until its generation runs, then close the connection without reading."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    before = server.metric("plmkit_inference_steps_total")
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(payload)}\r\n\r\n".encode() + payload)
    assert wait_until(lambda: server.metric("plmkit_inference_steps_total") > before + 20), "generation never ran"
    sock.close()


@pytest.mark.parametrize("path", ["/predict", "/stream"])
def test_a_client_that_disconnects_stops_its_generation(gen, path):
    cancelled = gen.metric("plmkit_cancelled_total", reason="cancelled")
    start = gen.metric("plmkit_inference_steps_total")
    send_and_leave(gen.port, path, {"inputs": "Once upon a time", **LONG}, gen)
    assert wait_until(lambda: gen.metric("plmkit_cancelled_total", reason="cancelled") == cancelled + 1)
    steps = gen.metric("plmkit_inference_steps_total")
    time.sleep(0.3)
    assert gen.metric("plmkit_inference_steps_total") == steps, "generation went on after the client left"
    assert steps - start < LONG["max_new_tokens"]
    assert httpx.get(f"{gen.url}/health", timeout=5).json()["load"] == {"active": 0, "queued": 0}


def test_twenty_clients_at_once_hold_the_limit_and_health_stays_fast(gen):
    statuses: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with gen.client(timeout=60) as c:
            answer = c.post("/predict", json={"inputs": "Once", "max_new_tokens": 300, "stop_token_ids": [],
                                              "seed": 1, "do_sample": True})
        with lock:
            statuses.append(answer.status_code)

    threads = [threading.Thread(target=client) for _ in range(20)]
    for t in threads:
        t.start()
    health_times = []
    with gen.client(timeout=10) as c:
        while any(t.is_alive() for t in threads) and len(health_times) < 20:
            start = time.monotonic()
            assert c.get("/health").status_code == 200
            health_times.append(time.monotonic() - start)
            time.sleep(0.02)
    for t in threads:
        t.join(60)
    assert sorted(set(statuses)) == [200, 429] and len(statuses) == 20
    assert statuses.count(200) >= 4  # the admitted ones finish
    assert max(health_times) < 1.0, health_times
    busy = httpx.post(f"{gen.url}/predict", json={"inputs": "x"}, timeout=10)
    assert busy.status_code == 200  # all admissions were released


def test_the_deadline_answers_504_and_stops_the_work(gpt_tokenizer):
    with serving(generator_pipe(gpt_tokenizer), limits=limits(max_new_tokens=3000, request_timeout=0.5)) as s:
        start = time.monotonic()
        answer = httpx.post(f"{s.url}/predict", json={"inputs": "Once", **LONG}, timeout=30)
        assert answer.status_code == 504 and "--request-timeout" in answer.json()["detail"]
        assert time.monotonic() - start < 5
        assert wait_until(lambda: s.metric("plmkit_cancelled_total", reason="deadline") == 1)
        # a stream past its deadline just ends
        with httpx.stream("POST", f"{s.url}/stream", json={"inputs": "Once", **LONG}, timeout=30) as r:
            text = "".join(r.iter_text())
        assert r.status_code == 200 and time.monotonic() - start < 10 and len(text) > 0


def test_requests_that_arrive_together_are_batched_with_their_own_errors(bert_tokenizer):
    pipe = fill_mask_pipe(bert_tokenizer)
    inputs = ["a [MASK] film", "no mask here", "the [MASK] was long", "[MASK] [MASK] end"]
    with serving(pipe, batch_window=0.5, max_batch=16) as s:
        answers: dict[int, httpx.Response] = {}

        def ask(i: int) -> None:
            answers[i] = httpx.post(f"{s.url}/predict", json={"inputs": inputs[i], "top_k": 3}, timeout=30)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        batches = s.metric("plmkit_batch_inputs_count")
        inputs_run = s.metric("plmkit_batch_inputs_sum")
    assert answers[1].status_code == 400 and "no mask token" in answers[1].json()["detail"]
    for i in (0, 2, 3):
        assert answers[i].status_code == 200
        alone = pipe(inputs[i], top_k=3)
        got = answers[i].json()["outputs"]
        assert [c["token"] for m in got["masks"] for c in m["candidates"]] == \
               [c["token"] for m in alone["masks"] for c in m["candidates"]]
    # first all four together (that call fails on input 1), then each alone: at least one batch > 1
    assert inputs_run > batches
