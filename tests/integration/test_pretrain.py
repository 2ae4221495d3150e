"""Corpus -> tokenizer -> shards -> pretraining, through the CLI, on real text.

Not marked slow: the runs are tiny (a few seconds on 2 cores); `slow` is for tests over ~10 s."""

from __future__ import annotations

import json

import pytest

from plmkit.cli import main
from plmkit.data.tokenizer import Tokenizer
from plmkit.rundir import model_dir
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
    best = json.loads((run / "best" / "best.json").read_text())  # the lowest held-out loss is kept
    lowest = min(evals, key=lambda e: e["eval_loss"])
    assert (best["metric"], best["step"], best["value"]) == ("eval_loss", lowest["step"], lowest["eval_loss"])
    assert best["metrics"]["eval_loss"] == lowest["eval_loss"]
    assert model_dir(run) == run / "best"  # what finetune / curve / init_from load from this run
    assert f"The best held-out eval_loss was reached at step {lowest['step']}" in (run / "best" / "README.md").read_text()
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["vocab_size"] == Tokenizer.load(run / "final").vocab_size
    if preset == "bert-tiny":
        assert 0.0 < evals[-1]["mlm_accuracy"] <= 1.0 and "nsp_accuracy" in evals[-1]


def test_pretrain_without_data_path_is_a_clear_error(tmp_path, capsys):
    assert main(["pretrain", "--config", "bert-tiny", "-o", str(tmp_path / "run")]) == 2
    assert "data.path is required" in capsys.readouterr().err


def test_pretrain_patience_stops_when_heldout_loss_stops_falling(tmp_path):
    """patience=2: two evaluations in a row without a lower held-out loss end the run; best/ holds
    the model of the lowest one and a resumed run remembers it."""
    from plmkit.config import ModelConfig
    from plmkit.models import build_model
    from plmkit.recipes.best_checkpoint import BestCheckpoint
    from plmkit.train.loop import StopTraining

    model = build_model(ModelConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
                        "pretraining")
    keeper = BestCheckpoint(model, None, tmp_path, "eval_loss", patience=2)
    for step, loss in [(10, 5.0), (20, 4.0)]:
        keeper(step, {"loss": 1.0, "eval_eval_loss": loss, "eval_mlm_accuracy": step / 100})
    keeper(30, {"eval_eval_loss": 4.5})
    with pytest.raises(StopTraining):
        keeper(40, {"eval_eval_loss": 4.2})
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best == {"metric": "eval_loss", "value": 4.0, "step": 20, "metrics": {"eval_loss": 4.0, "mlm_accuracy": 0.2}}
    assert not (tmp_path / "best" / "finetune.json").exists()  # a pretraining run is not a fine-tuning run
    again = BestCheckpoint(model, None, tmp_path, "eval_loss", patience=2, resuming=True)
    assert (again.best, again.best_step) == (4.0, 20)
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_pretrain_patience_must_be_positive():
    from plmkit.config import ConfigError
    from plmkit.recipes.pretrain import load_config

    with pytest.raises(ConfigError, match="patience"):
        load_config("bert-tiny", ["patience=0"])


def test_pretrain_cli_patience_ends_the_run_when_heldout_loss_stops_falling(corpus, tmp_path, capsys):
    """--set patience=1 through the CLI: at an LR too small to move an fp32 weight the held-out loss
    repeats, so the second evaluation is not lower and the run stops there; best/ is the first."""
    tok_dir, shards, run = tmp_path / "tok", tmp_path / "shards", tmp_path / "run"
    assert main(["tokenizer", "train", str(corpus), "--kind", "wordpiece", "--vocab-size", "1000", "-o", str(tok_dir)]) == 0
    assert main(["prepare", str(corpus), "--tokenizer", str(tok_dir), "-o", str(shards), "--holdout", "0.05"]) == 0
    args = ["pretrain", "--config", "bert-tiny", "--shards", str(shards), "-o", str(run), "--set", "patience=1",
            "--set", "train.max_steps=40", "--set", "train.eval_every=10", "--set", "train.lr=1e-12"]
    for s in SMALL:
        args += ["--set", s]
    assert main(args) == 0
    assert [e["step"] for e in read_metrics(run / "metrics.jsonl", "eval")] == [10, 20]
    assert json.loads((run / "best" / "best.json").read_text())["step"] == 10
    assert "lowest held-out loss" in capsys.readouterr().out
