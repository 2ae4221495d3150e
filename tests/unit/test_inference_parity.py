"""One inference path per task: `plmkit eval` / `plmkit predict` on a fine-tuning run give exactly
what `plmkit.pipeline` gives on the same run and data, for every task.

Each run is a short fine-tuning of a tiny random model (its predictions vary from input to input,
which each test checks, so equality is not vacuous) with inference settings that matter on this
data: a max_length that cuts inputs, QA windows, beam search, a decoder's separator.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

import plmkit
from plmkit.cli import main
from plmkit.data.tasks import read_classification, read_conll, read_seq2seq_jsonl, read_squad
from plmkit.data.tokenizer import Tokenizer
from plmkit.metrics import classification_report, entity_scores, rouge, squad_scores
from plmkit.recipes.finetune import finetune

WORDS = ("good great fine bad awful dull film plot actor story music scene long short funny sad the a was is "
         "and but very quite rather").split()
NAMES = {"john": "PER", "mary": "PER", "paris": "LOC", "london": "LOC", "acme": "ORG"}
SHAPE = {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_layers": 2, "max_positions": 64,
         "dropout": 0.0, "attention_dropout": 0.0, "initializer_range": 0.5}
QUIET = {"lr": 1e-4, "max_steps": 2, "batch_size": 8, "eval_every": 0, "save_every": 0, "progress": False}


def sentence(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(WORDS + list(NAMES)) for _ in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Small task files written from a seeded generator."""
    rng = random.Random(7)
    root = tmp_path_factory.mktemp("parity-data")
    rows = ["sentence\thypothesis\tlabel"]
    for i in range(24):
        rows.append(f"{' '.join(sentence(rng, rng.randint(3, 16)))}\t{' '.join(sentence(rng, 4))}\t"
                    f"{('pos', 'neg', 'neu')[i % 3]}")
    (root / "cls.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    blocks = []
    for _ in range(20):
        words = sentence(rng, rng.randint(3, 14))
        blocks.append("\n".join(f"{w} {'B-' + NAMES[w] if w in NAMES else 'O'}" for w in words))
    (root / "ner.txt").write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    paragraphs = []
    for p in range(4):
        words = sentence(rng, 40)
        context = " ".join(words)
        qas = []
        for q in range(2):
            start = rng.randint(0, 37)
            answer = " ".join(words[start: start + 2])
            qas.append({"id": f"{p}-{q}", "question": f"what {words[start]} {rng.choice(WORDS)} ?",
                        "answers": [{"text": answer, "answer_start": context.index(answer)}]})
        paragraphs.append({"context": context, "qas": qas})
    (root / "qa.json").write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}), encoding="utf-8")
    with open(root / "pairs.jsonl", "w", encoding="utf-8") as f:
        for _ in range(10):
            f.write(json.dumps({"source": " ".join(sentence(rng, rng.randint(6, 30))),
                                "target": " ".join(sentence(rng, 4))}) + "\n")
    (root / "lm.txt").write_text("\n\n".join(" ".join(sentence(rng, rng.randint(5, 20))) for _ in range(6)) + "\n",
                                 encoding="utf-8")
    return {p.stem: p for p in root.iterdir()}


@pytest.fixture(scope="module")
def tok_dir(data, tmp_path_factory) -> Path:
    texts = [line for f in data.values() for line in f.read_text(encoding="utf-8").splitlines()]
    out = tmp_path_factory.mktemp("parity-tok")
    Tokenizer.train(iter(texts * 3), kind="wordpiece", vocab_size=200).save(out)
    return out


def run(task: str, data_file: Path, tok_dir: Path, out: Path, **fields: Any) -> Path:
    """A finished fine-tuning run of a tiny random model (dev = the training file)."""
    preset = fields.pop("model", "bert-tiny")
    finetune(task, model=preset, tokenizer=str(tok_dir), train_file=str(data_file), dev_file=str(data_file),
             out=str(out), model_overrides={**SHAPE, **fields.pop("model_overrides", {})}, train=QUIET, **fields)
    return out


def predicted_rows(run_dir: Path, data_file: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """`plmkit predict` on the run, as rows."""
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", str(run_dir), "--data", str(data_file), "-o", str(out)]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def evaluated(run_dir: Path, data_file: Path, capsys) -> dict[str, float]:
    """The metrics `plmkit eval` prints for the run."""
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--data", str(data_file)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("types", [2, 1], ids=["segments", "no-segments"])
def test_classification(data, tok_dir, tmp_path, capsys, types):
    """With type_vocab_size 1 (RoBERTa's) a pair's segment ids are dropped on both paths."""
    path = run("classification", data["cls"], tok_dir, tmp_path / "run", pair_column="hypothesis", max_length=12,
               model_overrides={"type_vocab_size": types})
    examples = read_classification(data["cls"], pair_column="hypothesis")
    rows = predicted_rows(path, data["cls"], tmp_path)
    pipe = plmkit.pipeline("auto", path)
    assert pipe.task == "text-classification" and pipe.defaults["max_length"] == 12
    results = pipe([(e.text, e.pair) for e in examples])
    assert [r["label"] for r in rows] == [r["label"] for r in results]
    assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in results], abs=1e-6)
    assert len({r["label"] for r in results}) > 1  # the predictions vary
    names = list(pipe.model.config.id2label.values())
    report = classification_report([names.index(r["label"]) for r in results], [names.index(e.label) for e in examples],
                                   names)
    assert evaluated(path, data["cls"], capsys)["accuracy"] == pytest.approx(report["accuracy"])


def test_ner(data, tok_dir, tmp_path, capsys):
    path = run("ner", data["ner"], tok_dir, tmp_path / "run", max_length=10)
    sentences = read_conll(data["ner"], scheme="bio")
    rows = predicted_rows(path, data["ner"], tmp_path)
    pipe = plmkit.pipeline("auto", path)
    results = pipe([{"words": list(s.words)} for s in sentences])
    assert [r["tags"] for r in rows] == [r["tags"] for r in results]
    assert any(score is None for r in results for score in r["scores"])  # words past max_length: "O"
    assert len({t for r in results for t in r["tags"]}) > 1
    f1 = entity_scores([list(s.tags) for s in sentences], [r["tags"] for r in results])["f1"]
    assert evaluated(path, data["ner"], capsys)["f1"] == pytest.approx(f1)


def test_qa(data, tok_dir, tmp_path, capsys):
    path = run("qa", data["qa"], tok_dir, tmp_path / "run", max_length=32, doc_stride=8, max_query_length=8)
    questions = read_squad(data["qa"])
    rows = predicted_rows(path, data["qa"], tmp_path)
    pipe = plmkit.pipeline("auto", path)
    assert (pipe.defaults["max_length"], pipe.defaults["doc_stride"]) == (32, 8)
    inputs = [{"question": q.question, "context": q.context} for q in questions]
    assert len(pipe.preprocess(inputs[0], pipe.defaults)) > 1  # contexts span several windows
    results = pipe(inputs)
    assert [r["answer"] for r in rows] == [r["answer"] for r in results]
    assert len({r["answer"] for r in results}) > 1
    scores = squad_scores({q.id: r["answer"] for q, r in zip(questions, results)},
                          {q.id: list(q.answers) for q in questions})
    assert evaluated(path, data["qa"], capsys)["f1"] == pytest.approx(scores["f1"])


@pytest.mark.parametrize("task,preset,settings", [
    ("summarization", "seq2seq-small", {"num_beams": 2, "no_repeat_ngram_size": 2, "max_source_length": 16}),
    ("translation", "gpt-tiny", {"separator": " =>", "max_source_length": 12}),
], ids=["encoder-decoder", "decoder"])
def test_seq2seq(data, tok_dir, tmp_path, capsys, task, preset, settings):
    path = run(task, data["pairs"], tok_dir, tmp_path / "run", model=preset, max_target_length=6, **settings)
    examples = read_seq2seq_jsonl(data["pairs"], "source", "target")
    rows = predicted_rows(path, data["pairs"], tmp_path)
    pipe = plmkit.pipeline("auto", path)
    assert pipe.task == task and all(pipe.defaults[k] == v for k, v in settings.items())
    results = pipe([e.source for e in examples])
    key = f"{'summary' if task == 'summarization' else 'translation'}_text"
    assert [r["prediction"] for r in rows] == [r[key] for r in results]
    assert len({r[key] for r in results}) > 1
    metrics = evaluated(path, data["pairs"], capsys)
    expected = rouge([r[key] for r in results], [list(e.references) for e in examples])
    assert metrics["rougeL"] == pytest.approx(expected["rougeL"])


def test_lm_evaluation_runs_on_the_shared_batches(data, tok_dir, tmp_path):
    """An LM run's predictions are per-document losses, which no pipeline computes (its pipeline,
    text-generation, generates); each equals the model's own loss on that document."""
    path = run("lm", data["lm"], tok_dir, tmp_path / "run", model="gpt-tiny", block_size=64)
    pipe = plmkit.pipeline("auto", path)
    assert pipe.task == "text-generation"
    rows = predicted_rows(path, data["lm"], tmp_path)
    texts = [t for t in data["lm"].read_text(encoding="utf-8").split("\n\n") if t.strip()]
    assert len(rows) == len(texts) == 6
    model, tok = pipe.model.eval(), pipe.tokenizer
    for row, text in zip(rows, texts):
        ids = tok.encode(text.strip(), add_special_tokens=False).ids + [model.config.eos_token_id]
        with torch.no_grad():
            loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss
        assert row["tokens"] == len(ids) - 1 and row["loss"] == pytest.approx(float(loss), rel=1e-5)


def test_training_features_are_the_tokens_the_pipelines_see(data, tok_dir, tiny):
    """What a model trains on (the recipes' feature builders) is what it is asked at inference
    (the pipelines' batched encoding), truncation and segment ids included."""
    from plmkit.data.tasks import encode_classification, encode_ner
    from plmkit.infer.pipeline import TextClassificationPipeline, TokenClassificationPipeline

    tok = Tokenizer.load(tok_dir)
    examples = read_classification(data["cls"], pair_column="hypothesis")
    clf = TextClassificationPipeline(tiny("bert-tiny", "sequence-classification", vocab_size=tok.vocab_size), tok)
    inputs = [(e.text, e.pair) if i % 2 else e.text for i, e in enumerate(examples)]
    features = clf.preprocess_batch(inputs, {"max_length": 12})
    expected = encode_classification([e if i % 2 else type(e)(e.text, e.label) for i, e in enumerate(examples)], tok,
                                     max_length=12)
    assert [f.inputs for (f,) in features] == expected
    sentences = read_conll(data["ner"])
    ner = TokenClassificationPipeline(tiny("bert-tiny", "token-classification", vocab_size=tok.vocab_size), tok)
    features = ner.preprocess_batch([{"words": list(s.words)} for s in sentences], {**ner.defaults, "max_length": 10})
    assert [f.inputs for (f,) in features] == [f.inputs for f in encode_ner(sentences, tok, max_length=10)]


def test_one_collate_pads_task_features_and_pretraining_examples():
    """Pretraining examples (numpy rows, a numpy scalar label) pad by the same rule as task features."""
    import numpy as np

    from plmkit.data import pretraining
    from plmkit.data.tasks import collate

    assert pretraining.collate is collate
    rng = np.random.default_rng(0)
    examples = [{"input_ids": rng.integers(5, 50, n), "token_type_ids": np.ones(n, dtype=np.int64),
                 "attention_mask": np.ones(n, dtype=np.int64), "labels": rng.integers(0, 50, n),
                 "next_sentence_label": np.int64(n % 2)} for n in (3, 7, 5)]
    batch = collate(examples, 1)
    assert batch["input_ids"].shape == (3, 7) and batch["next_sentence_label"].tolist() == [1, 1, 1]
    assert batch["input_ids"][0, 3:].tolist() == [1] * 4 and batch["labels"][0, 3:].tolist() == [-100] * 4
    assert batch["token_type_ids"][2, 5:].tolist() == [0, 0] and batch["attention_mask"][2].tolist() == [1] * 5 + [0] * 2
    assert all(t.dtype == torch.long for t in batch.values())
