"""Corpus -> tokenizer -> shards -> pretraining, through the CLI, on real text.

Not marked slow: the runs are tiny (a few seconds on 2 cores); `slow` is for tests over ~10 s."""

from __future__ import annotations

import json

import pytest

from plmkit.cli import main
from plmkit.data.tokenizer import Tokenizer
from plmkit.train.metrics_log import read_metrics

SMALL = ["model.hidden_size=64", "model.num_heads=2", "model.intermediate_size=128", "model.num_layers=2",
         "train.batch_size=16", "train.warmup_steps=5", "train.log_every=5", "train.save_every=20",
         "train.progress=false", "data.eval_examples=64", "data.max_length=64"]


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    lines = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").split("\n")[:6000]
    path = root / "shakespeare.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("preset,kind", [("bert-tiny", "wordpiece"), ("gpt-tiny", "bpe")])
def test_pretrain_lowers_heldout_loss(corpus, tmp_path, preset, kind):
    tok_dir, shards, run = tmp_path / "tok", tmp_path / "shards", tmp_path / "run"
    assert main(["tokenizer", "train", str(corpus), "--kind", kind, "--vocab-size", "1000", "-o", str(tok_dir)]) == 0
    assert main(["prepare", str(corpus), "--tokenizer", str(tok_dir), "-o", str(shards), "--holdout", "0.05"]) == 0
    args = ["pretrain", "--config", preset, "--data", str(shards), "-o", str(run),
            "--set", "train.max_steps=40", "--set", "train.eval_every=20"]
    for s in SMALL:
        args += ["--set", s]
    assert main(args) == 0
    evals = read_metrics(run / "metrics.jsonl", "eval")
    assert [e["step"] for e in evals] == [20, 40]
    first = read_metrics(run / "metrics.jsonl", "train")[0]["loss"]
    assert evals[-1]["eval_loss"] < first - 0.5  # well below the loss at the start (ln 1000 = 6.9)
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["vocab_size"] == Tokenizer.load(run / "final").vocab_size
    if preset == "bert-tiny":
        assert 0.0 < evals[-1]["mlm_accuracy"] <= 1.0 and "nsp_accuracy" in evals[-1]


def test_pretrain_without_data_path_is_a_clear_error(tmp_path, capsys):
    assert main(["pretrain", "--config", "bert-tiny", "-o", str(tmp_path / "run")]) == 2
    assert "data.path is required" in capsys.readouterr().err
