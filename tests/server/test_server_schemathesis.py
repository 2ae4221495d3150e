"""schemathesis against the server's own OpenAPI schema, over real HTTP: no generated request,
valid (positive) or invalid (negative), gets a 5xx, on every endpoint of a generation server and
of a classifier. Cases are drawn with hypothesis from each operation's strategy."""

from __future__ import annotations

import pytest
from conftest import classifier_pipe, generator_pipe, limits, serving

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

pytestmark = pytest.mark.slow
SMALL = dict(max_new_tokens=8, max_beams=2, max_prompt_tokens=64, max_chars=300, max_inputs=4, request_timeout=20,
             max_explain_tokens=32, max_explain_steps=4)
EXAMPLES = 50


def fuzz(url: str) -> list[str]:
    """Run every operation of the schema at `url` with positive and negative cases; the operations run."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    ran = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not len(operation.body):
                continue  # nothing to make invalid
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case) -> None:
                case.call_and_validate(checks=[not_a_server_error], timeout=30)

            check()
        ran.append(f"{operation.method.upper()} {operation.path}")
    return ran


def test_generation_server_never_answers_5xx(gpt_tokenizer):
    with serving(generator_pipe(gpt_tokenizer), limits=limits(**SMALL)) as s:
        ran = fuzz(s.url)
    assert {"POST /predict", "POST /stream", "POST /explain", "POST /v1/completions", "POST /v1/chat/completions",
            "GET /health", "GET /metrics", "GET /v1/models"} <= set(ran)


def test_classifier_server_never_answers_5xx(bert_tokenizer):
    with serving(classifier_pipe(bert_tokenizer), limits=limits(**SMALL)) as s:
        ran = fuzz(s.url)
    assert {"POST /predict", "POST /explain", "GET /health"} <= set(ran)
