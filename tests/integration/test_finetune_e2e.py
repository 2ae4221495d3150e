"""Fine-tuning end to end on real data: resume, overfitting QA and translation slices, the
Chinese tasks (CMRC 2018, Weibo NER, CSL titles) and `plmkit eval` / `predict` for every task."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from plmkit.cli import main
from plmkit.config import model_config
from plmkit.data.tokenizer import Tokenizer
from plmkit.models import build_model
from plmkit.recipes.finetune import finetune_classification, finetune_ner, finetune_qa, finetune_seq2seq

pytestmark = pytest.mark.slow

TINY = {"hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "num_layers": 2, "max_positions": 160,
        "dropout": 0.0, "attention_dropout": 0.0}
QUIET = {"save_every": 0, "progress": False, "log_every": 10}


def _tokenizer(texts: list[str], folder: Path, size: int = 3000, lowercase: bool = True) -> Path:
    Tokenizer.train(iter(texts), kind="wordpiece", vocab_size=size, lowercase=lowercase).save(folder)
    return folder


def _bert(tok_dir: Path, folder: Path) -> Path:
    """A tiny random BERT checkpoint with a tokenizer: the "pretrained" model of these runs."""
    tok = Tokenizer.load(tok_dir)
    overrides = {**TINY, "vocab_size": tok.vocab_size, "pad_token_id": tok.pad_id}
    cfg = model_config("bert-tiny", [f"{k}={v}" for k, v in overrides.items()])
    return build_model(cfg, "masked-lm").save_pretrained(folder, tok)


def _cli(*args: str) -> None:
    assert main(list(args)) == 0


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_resumed_finetune_equals_uninterrupted(shared_data, tmp_path):
    rows = (shared_data / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[:161]
    data = tmp_path / "sst.tsv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    tok = _tokenizer([r.split("\t")[0] for r in rows], tmp_path / "tok", 800)
    common = dict(model="bert-tiny", tokenizer=str(tok), train_file=str(data), dev_file=str(data),
                  model_overrides=TINY, max_length=48, bucket=2)
    train = {"lr": 1e-3, "schedule": "constant", "batch_size": 16, "eval_every": 6, "save_every": 6,
             "progress": False, "log_every": 1, "warmup_steps": 0}
    whole = finetune_classification(out=str(tmp_path / "a"), train={**train, "max_steps": 18}, **common)
    finetune_classification(out=str(tmp_path / "b"), train={**train, "max_steps": 12}, **common)
    resumed = finetune_classification(out=str(tmp_path / "b"), resume="auto", train={**train, "max_steps": 18},
                                      **common)
    assert resumed.train.start_step == 12
    assert resumed.train.losses == pytest.approx(whole.train.losses[12:], abs=1e-5)
    assert resumed.best_value == pytest.approx(whole.best_value)


def test_qa_overfits_a_squad_slice_and_predicts(shared_data, tmp_path):
    import zipfile

    with zipfile.ZipFile(shared_data / "squad-v1.1" / "dev-v1.1.json.zip") as archive:
        squad = json.loads(archive.read("dev-v1.1.json"))
    paragraphs = [p for p in squad["data"][1]["paragraphs"] if len(p["context"]) < 600][:5]
    for p in paragraphs:
        p["qas"] = p["qas"][:5]
    data = tmp_path / "squad.json"
    data.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}), encoding="utf-8")
    texts = [p["context"] for p in paragraphs] + [q["question"] for p in paragraphs for q in p["qas"]]
    tok = _tokenizer(texts, tmp_path / "tok", 1200)
    run = tmp_path / "run"
    result = finetune_qa(model=str(_bert(tok, tmp_path / "bert")), train_file=str(data), dev_file=str(data),
                         out=str(run), max_length=160, doc_stride=48, patience=3,
                         train={"lr": 3e-3, "max_steps": 300, "batch_size": 8, "eval_every": 50, **QUIET})
    assert result.dev_metrics["f1"] > 50 and result.dev_metrics["exact_match"] > 30
    _cli("predict", str(run), "--data", str(data), "-o", str(tmp_path / "answers.jsonl"))
    rows = _jsonl(tmp_path / "answers.jsonl")
    contexts = {q["id"]: p["context"] for p in paragraphs for q in p["qas"]}
    assert len(rows) == 25 and all(r["answer"] in contexts[r["id"]] for r in rows)


def test_translation_with_a_warm_started_bert_on_multi30k(shared_data, tmp_path):
    folder = shared_data / "multi30k"
    for lang in ("en", "de"):
        lines = gzip.open(folder / f"train.{lang}.gz", "rt", encoding="utf-8").read().splitlines()[:48]
        (tmp_path / f"pairs.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts = [line for lang in ("en", "de") for line in (tmp_path / f"pairs.{lang}").read_text().splitlines()]
    tok = _tokenizer(texts, tmp_path / "tok", 1500, lowercase=False)  # BLEU is case-sensitive
    run = tmp_path / "run"
    result = finetune_seq2seq(model=str(_bert(tok, tmp_path / "bert")), warm_start=True, kind="translation",
                              train_file=str(tmp_path / "pairs"), dev_file=str(tmp_path / "pairs"), out=str(run),
                              source_lang="en", target_lang="de", max_source_length=48, max_target_length=40,
                              max_dev_examples=16,
                              train={"lr": 2e-3, "max_steps": 240, "batch_size": 16, "eval_every": 80, **QUIET})
    assert result.metric == "bleu" and result.dev_metrics["bleu"] > 40
    _cli("eval", str(run), "--data", str(tmp_path / "pairs"), "-o", str(tmp_path / "eval.json"))
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["bleu"] > 40
    (tmp_path / "src.en").write_text("A man is riding a bike.\nTwo dogs play.\n", encoding="utf-8")
    _cli("predict", str(run), "--data", str(tmp_path / "src"), "-o", str(tmp_path / "out.tsv"))
    lines = (tmp_path / "out.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "source\tprediction" and len(lines) == 3


def test_chinese_tasks(shared_data, tmp_path):
    vocab = str(shared_data / "vocab" / "bert-base-chinese-vocab.txt")
    small = {**TINY, "max_positions": 128}
    tiny_run = {"lr": 3e-3, "batch_size": 8, "eval_every": 0, **QUIET}

    ner = finetune_ner(model="bert-tiny", tokenizer=vocab, train_file=str(shared_data / "weibo-ner" / "train.all.bmes"),
                       dev_file=str(shared_data / "weibo-ner" / "dev.all.bmes"), out=str(tmp_path / "ner"),
                       scheme="bioes", max_train_examples=64, max_dev_examples=32, model_overrides=small,
                       max_length=96, train={**tiny_run, "max_steps": 10})
    labels = set(json.loads((tmp_path / "ner" / "final" / "config.json").read_text())["id2label"].values())
    assert {"B-PER.NAM", "E-PER.NAM"} <= labels and not any(t.startswith("M-") for t in labels)
    assert 0.0 <= ner.dev_metrics["f1"] <= 1.0
    untagged = tmp_path / "words.txt"
    untagged.write_text("张\n三\n在\n北\n京\n\n你\n好\n", encoding="utf-8")
    _cli("predict", str(tmp_path / "ner"), "--data", str(untagged), "-o", str(tmp_path / "tags.jsonl"))
    assert [len(r["tags"]) for r in _jsonl(tmp_path / "tags.jsonl")] == [5, 2]

    cmrc = str(shared_data / "cmrc2018" / "cmrc2018_trial.json")
    qa = finetune_qa(model="bert-tiny", tokenizer=vocab, train_file=cmrc, dev_file=cmrc, out=str(tmp_path / "qa"),
                     language="zh", max_length=128, doc_stride=32, max_train_examples=48, max_dev_examples=16,
                     model_overrides=small, train={**tiny_run, "max_steps": 10})
    assert 0.0 <= qa.dev_metrics["f1"] <= 100.0
    answers = _jsonl(tmp_path / "qa" / "dev_predictions.jsonl")
    assert len(answers) == 16 and all(" " not in r["answer"] for r in answers)

    csl = str(shared_data / "csl-ts" / "dev.tsv")
    summary = finetune_seq2seq(model="seq2seq-small", tokenizer=vocab, train_file=csl, dev_file=csl,
                               out=str(tmp_path / "csl"), source_column=1, target_column=2, language="zh",
                               max_source_length=96, max_target_length=24, max_train_examples=48,
                               max_dev_examples=8, model_overrides=small, train={**tiny_run, "max_steps": 10})
    assert set(summary.dev_metrics) >= {"rouge1", "rougeL", "bleu"}
    predictions = [r["prediction"] for r in _jsonl(tmp_path / "csl" / "dev_predictions.jsonl")]
    assert not any(" " in p for p in predictions if any("\u4e00" <= c <= "\u9fff" for c in p))


def test_lm_eval_and_predict_cli(shared_data, tmp_path):
    text = (shared_data / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
    train, dev = tmp_path / "train.txt", tmp_path / "dev.txt"
    train.write_text(text[:20000], encoding="utf-8")
    dev.write_text(text[20000:26000], encoding="utf-8")
    tok = _tokenizer(text[:26000].splitlines(), tmp_path / "tok", 1500)
    _cli("finetune", "lm", "--model", "gpt-tiny", "--tokenizer", str(tok), "--train", str(train), "--dev", str(dev),
         "-o", str(tmp_path / "run"), "--set", "block_size=64", "--set", "train.max_steps=60",
         "--set", "train.lr=0.003", "--set", "train.eval_every=30", "--set", "train.progress=false",
         *[f"--set=model_overrides.{k}={v}" for k, v in TINY.items()])
    ppl = json.loads((tmp_path / "run" / "perplexity.json").read_text())
    assert ppl["after"]["perplexity"] < ppl["before"]["perplexity"] / 3
    _cli("eval", str(tmp_path / "run"), "--data", str(dev), "-o", str(tmp_path / "eval.json"))
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["perplexity"] == pytest.approx(
        ppl["after"]["perplexity"], rel=1e-4)
    _cli("predict", str(tmp_path / "run"), "--data", str(dev), "-o", str(tmp_path / "docs.jsonl"))
    rows = _jsonl(tmp_path / "docs.jsonl")
    assert rows and all(np.isfinite(r["perplexity"]) for r in rows if r["tokens"])
