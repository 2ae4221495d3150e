"""The HTTP server: /health, /predict and the web page, through FastAPI's TestClient."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from plmkit.config import model_config  # noqa: E402
from plmkit.data.tokenizer import Tokenizer  # noqa: E402
from plmkit.infer import server  # noqa: E402
from plmkit.infer.pipeline import pipeline  # noqa: E402
from plmkit.models import build_model  # noqa: E402

TINY = ["hidden_size=32", "num_heads=2", "intermediate_size=64", "num_layers=2", "max_positions=64"]


@pytest.fixture(scope="module")
def tokenizer(shared_data: Path) -> Tokenizer:
    return Tokenizer.load(shared_data / "vocab" / "bert-base-uncased-vocab.txt")


def client_for(task: str, head: str, tokenizer: Tokenizer, *extra: str, **app_kwargs) -> tuple[TestClient, object]:
    torch.manual_seed(0)
    model = build_model(model_config("bert-tiny", TINY + list(extra)), head)
    pipe = pipeline(task, model, tokenizer=tokenizer)
    return TestClient(server.create_app(pipe, **app_kwargs)), pipe


@pytest.fixture(scope="module")
def classifier(tokenizer):
    return client_for("text-classification", "sequence-classification", tokenizer, "id2label={0: neg, 1: pos}",
                      limits=server.ServerLimits(max_inputs=3))


def test_health_reports_task_and_model(classifier):
    client, _ = classifier
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["task"] == "text-classification"
    assert body["model"]["labels"] == ["neg", "pos"] and body["model"]["head"] == "sequence-classification"
    assert body["options"] == {"top_k": 1, "max_length": None}


def test_predict_matches_the_pipeline(classifier):
    client, pipe = classifier
    single = client.post("/predict", json={"inputs": "a funny film"})
    assert single.status_code == 200
    assert single.json()["outputs"]["label"] == pipe("a funny film")["label"]
    assert single.json()["outputs"]["score"] == pytest.approx(pipe("a funny film")["score"], abs=1e-6)
    batch = client.post("/predict", json={"inputs": ["a", {"text": "b", "text_pair": "c"}], "top_k": 2}).json()
    assert len(batch["outputs"]) == 2 and len(batch["outputs"][1]["labels"]) == 2
    nested = client.post("/predict", json={"inputs": "a", "options": {"top_k": 2}}).json()
    assert len(nested["outputs"]["labels"]) == 2


def test_bad_requests_are_400_or_413(classifier):
    client, _ = classifier
    for body, status, words in [
        ({"text": "no inputs key"}, 400, "inputs"),
        ({"inputs": []}, 400, "empty"),
        ({"inputs": "x", "top_kk": 1}, 400, "unknown option"),
        ({"inputs": [{"question": "?"}]}, 400, "expected a text"),
        ({"inputs": ["a", "b", "c", "d"]}, 413, "limit is 3"),
    ]:
        response = client.post("/predict", json=body)
        assert response.status_code == status, body
        assert words in response.json()["detail"]


def test_web_page_is_self_contained(classifier):
    client, _ = classifier
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<textarea" in html and "<button" in html and 'post("predict"' in html and 'post("explain"' in html
    assert "http://" not in html and "https://" not in html and "<script src" not in html


def test_question_answering_server(tokenizer):
    client, _ = client_for("question-answering", "question-answering", tokenizer)
    context = "The tower stands in Paris."
    out = client.post("/predict", json={"inputs": {"question": "Where?", "context": context}}).json()["outputs"]
    assert context[out["start"]: out["end"]] == out["answer"]


def test_non_finite_scores_are_a_clear_500(tokenizer):
    client, pipe = client_for("text-classification", "sequence-classification", tokenizer)
    with torch.no_grad():
        pipe.model.classifier.bias.fill_(float("nan"))  # damaged weights
    answer = client.post("/predict", json={"inputs": "a funny film"})
    assert answer.status_code == 500 and "non-finite scores" in answer.json()["detail"]


def test_serve_command_line(tmp_path, tokenizer):
    parser = argparse.ArgumentParser()
    server.cli_configure(parser)
    args = parser.parse_args([str(tmp_path), "--port", "9000", "--task", "fill-mask"])
    assert (args.port, args.task, args.host) == (9000, "fill-mask", "127.0.0.1")
    with pytest.raises(SystemExit):
        parser.parse_args([str(tmp_path), "--task", "sentiment"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        server.cli_run(parser.parse_args([str(tmp_path / "missing")]))


def test_text_generation_streams_the_same_text_as_predict(shared_data):
    tok = Tokenizer.load(shared_data / "vocab" / "gpt2-vocab.json", merges=shared_data / "vocab" / "gpt2-merges.txt")
    torch.manual_seed(0)
    model = build_model(model_config("gpt-tiny", TINY), "causal-lm")
    client = TestClient(server.create_app(pipeline("text-generation", model, tokenizer=tok, max_new_tokens=6)))
    predicted = client.post("/predict", json={"inputs": "Once upon", "return_full_text": False}).json()["outputs"]
    streamed = client.post("/stream", json={"inputs": "Once upon"})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/plain")
    assert streamed.text == predicted["generated_text"] != ""
    assert client.post("/stream", json={"inputs": ["a", "b"]}).status_code == 400
    bad = client.post("/stream", json={"inputs": "a", "num_beams": 0})
    assert bad.status_code == 400 and "num_beams" in bad.json()["detail"]


def test_only_generation_servers_stream(classifier):
    client, _ = classifier
    assert client.post("/stream", json={"inputs": "a"}).status_code in (404, 405)


def test_weight_format_is_fixed_at_start_and_shown(tokenizer):
    from plmkit.infer.quantize import prepare_for_inference

    for dtype in ("bf16", "int8"):
        client, pipe = client_for("text-classification", "sequence-classification", tokenizer)
        reference = pipe("a funny film")["score"]
        prepare_for_inference(pipe.model, dtype)
        health = client.get("/health").json()
        assert health["model"]["weights"] == dtype
        assert health["explain"]["attribution"] is False and dtype in health["explain"]["attribution_unavailable"]
        out = client.post("/predict", json={"inputs": "a funny film"}).json()["outputs"]
        assert out["score"] == pytest.approx(reference, abs=0.05)
        refused = client.post("/predict", json={"inputs": "a", "dtype": "fp32"})
        assert refused.status_code == 400 and "--dtype" in refused.json()["detail"]
        explained = client.post("/explain", json={"inputs": "a funny film"}).json()
        assert explained["attribution"] is None and len(explained["attention"]["weights"]) == len(explained["tokens"])


def test_serve_flags_for_every_limit_and_labels(tokenizer):
    parser = argparse.ArgumentParser()
    server.cli_configure(parser)
    args = parser.parse_args(["run", "--dtype", "int4", "--max-new-tokens", "32", "--max-concurrent", "2",
                              "--request-timeout", "1.5", "--labels", "bad,good"])
    limits = server.ServerLimits.from_args(args)
    assert (args.dtype, limits.max_new_tokens, limits.max_concurrent, limits.request_timeout) == ("int4", 32, 2, 1.5)
    assert "--max-body-bytes" in limits.describe() and "--max-beams" in limits.describe()
    with pytest.raises(ValueError, match="--max-inputs must be a positive number"):
        server.ServerLimits(max_inputs=0)
    _, pipe = client_for("text-classification", "sequence-classification", tokenizer)
    server.rename_labels(pipe, "bad,good")
    assert pipe("a")["label"] in ("bad", "good")
    with pytest.raises(ValueError, match="needs 2 distinct"):
        server.rename_labels(pipe, "only-one")


def test_explain_endpoint_for_a_classifier(classifier):
    client, pipe = classifier
    body = client.post("/explain", json={"inputs": "a funny film", "layer": 0, "head": 1, "n_steps": 8}).json()
    tokens = body["tokens"]
    assert tokens[0] == "[CLS]" and body["attention"]["layer"] == 0 and body["attention"]["head"] == 1
    assert all(sum(row) == pytest.approx(1, abs=1e-3) for row in body["attention"]["weights"])
    attribution = body["attribution"]
    assert attribution["tokens"] == tokens and attribution["label"] == pipe("a funny film")["label"]
    for bad, words in [({"inputs": "a", "layer": 9}, "out of range"), ({"inputs": "a", "n_steps": 1000}, "--max-explain"),
                       ({"inputs": "word " * 300}, "--max-explain-tokens"), ({"inputs": 3}, "expected")]:
        answer = client.post("/explain", json=bad)
        assert answer.status_code == 400 and words in answer.json()["detail"], answer.text


def test_schemas_cover_every_pipeline_option():
    from plmkit.infer.pipeline import PIPELINES
    from plmkit.infer.server.schemas import PIPELINE_OPTIONS

    assert set(PIPELINE_OPTIONS) == set(PIPELINES)
    for task, cls in PIPELINES.items():
        assert set(PIPELINE_OPTIONS[task]) == set(cls.options), task
        assert {k: v[1] for k, v in PIPELINE_OPTIONS[task].items()} == {
            k: list(v) if isinstance(v, tuple) else v for k, v in cls.options.items()}, task
