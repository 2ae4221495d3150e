"""The OpenAI-compatible routes with the official `openai` client, raw server-sent events, and
/metrics read back through prometheus_client's own parser."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import classifier_pipe, generator_pipe, limits, serving

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def gen(gpt_tokenizer):
    pipe = generator_pipe(gpt_tokenizer)
    with serving(pipe, limits=limits(max_new_tokens=12, max_inputs=6), model_name="tiny-gpt") as s:
        yield s, pipe


@pytest.fixture(scope="module")
def client(gen):
    server, _ = gen
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_models_and_completions(gen, client):
    server, pipe = gen
    assert [m.id for m in client.models.list().data] == ["tiny-gpt"]
    out = client.completions.create(model="tiny-gpt", prompt="Once upon a time", max_tokens=5, temperature=0)
    expected = pipe("Once upon a time", max_new_tokens=5, return_full_text=False, do_sample=False)
    assert out.object == "text_completion" and out.choices[0].text == expected["generated_text"]
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 5
    assert out.usage.prompt_tokens == len(pipe.tokenizer.encode("Once upon a time", add_special_tokens=False).ids)
    many = client.completions.create(model="tiny-gpt", prompt=["a", "b"], n=2, max_tokens=3, seed=1)
    assert [c.index for c in many.choices] == [0, 1, 2, 3] and many.usage.completion_tokens == 12
    echoed = client.completions.create(model="tiny-gpt", prompt="Hi", max_tokens=2, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith("Hi")


def test_streamed_completion_equals_the_whole_one(client):
    whole = client.completions.create(model="tiny-gpt", prompt="The sea", max_tokens=8, temperature=0)
    chunks = list(client.completions.create(model="tiny-gpt", prompt="The sea", max_tokens=8, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_completions_and_their_stream(client, gen):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    whole = client.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=6, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=6, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    server, pipe = gen
    from plmkit.infer.server.openai_api import chat_prompt
    from plmkit.infer.server.schemas import ChatMessage

    prompt = chat_prompt([ChatMessage(**m) for m in messages])
    assert prompt == "System: Be brief.\nUser: Hello there\nAssistant:"


def test_raw_server_sent_events_follow_openai_wire_format(gen):
    server, _ = gen
    with httpx.stream("POST", f"{server.url}/v1/completions", timeout=30,
                      json={"prompt": "x", "max_tokens": 3, "temperature": 0, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][len("data: "):])
    assert last["object"] == "text_completion" and last["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("body, words", [
    ({"prompt": "x", "max_tokens": 1000}, "--max-new-tokens"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "logprobs": 3}, "logprobs"),
    ({"prompt": "x", "frequency_penalty": 1.0}, "not supported"),
    ({"prompt": "x", "dtype": "int4"}, "chosen when the server starts"),
    ({"prompt": ["a"] * 4, "n": 2}, "--max-inputs"),
    ({"prompt": "x", "stream": True, "n": 2}, "one completion"),
    ({"prompt": "x", "nonsense": 1}, "unknown field nonsense"),
])
def test_bad_openai_requests_are_openai_errors(gen, client, body, words):
    server, _ = gen
    answer = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert answer.status_code in (400, 413), answer.text
    error = answer.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    known = {k: v for k, v in body.items() if k not in ("dtype", "nonsense")}
    extra = {k: v for k, v in body.items() if k not in known}
    with pytest.raises(openai.APIStatusError) as raised:
        client.completions.create(model="tiny-gpt", extra_body=extra, **known)
    assert words in raised.value.message


def test_metrics_parse_with_prometheus_client(gen):
    from prometheus_client.parser import text_string_to_metric_families

    server, _ = gen
    httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=30)
    httpx.post(f"{server.url}/predict", json={"inputs": "x", "bogus": 1}, timeout=30)
    httpx.get(f"{server.url}/no/such/page/{'x' * 50}", timeout=30)
    answer = httpx.get(f"{server.url}/metrics", timeout=30)
    assert answer.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    assert {"plmkit_requests", "plmkit_request_seconds", "plmkit_requests_in_flight", "plmkit_generated_tokens",
            "plmkit_inference_steps", "plmkit_batch_inputs", "plmkit_cancelled"} <= set(families)
    requests = {(s.labels["endpoint"], s.labels["status"]): s.value for s in families["plmkit_requests"].samples
                if s.name == "plmkit_requests_total"}
    assert requests[("/v1/completions", "200")] >= 1 and requests[("/predict", "400")] == 1
    assert requests[("other", "404")] == 1  # unknown paths share one label
    assert server.metric("plmkit_generated_tokens_total") >= 2
    assert server.metric("plmkit_request_seconds_count", endpoint="/v1/completions") >= 1


def test_only_decoders_get_openai_routes(bert_tokenizer):
    with serving(classifier_pipe(bert_tokenizer)) as s:
        assert httpx.post(f"{s.url}/v1/completions", json={"prompt": "x"}, timeout=10).status_code == 404
        assert httpx.get(f"{s.url}/health", timeout=10).json()["openai"] is False
