"""ELECTRA end to end through the CLI: pretraining on a general corpus mixed with in-domain text,
task-adaptive pretraining on the training texts, fine-tuning; the adapted model is what fine-tuning
starts from, and the dev texts are never read."""

from __future__ import annotations

import json

import pytest

from plmkit.cli import main
from plmkit.models import load
from plmkit.train.metrics_log import read_metrics

pytestmark = pytest.mark.slow

SMALL = ["model.hidden_size=64", "model.num_heads=2", "model.intermediate_size=128", "model.num_layers=2",
         "model.embedding_size=32", "train.batch_size=16", "train.warmup_steps=4", "train.log_every=5",
         "train.save_every=0", "train.progress=false", "data.eval_examples=64", "data.max_length=64",
         "train.max_steps=40", "train.eval_every=20"]


def test_electra_pretraining_adaptation_and_finetuning(shared_data, tmp_path):
    general = tmp_path / "wiki.txt"
    general.write_text("\n".join((shared_data / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
                                 .split("\n")[:1500]) + "\n", encoding="utf-8")
    sst = (shared_data / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(sst[:401]) + "\n", encoding="utf-8")
    dev = tmp_path / "dev.tsv"
    dev.write_text("\n".join(sst[:1] + sst[-100:]) + "\n", encoding="utf-8")
    vocab = str(shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    assert main(["prepare", str(general), "--tokenizer", vocab, "-o", str(tmp_path / "general"), "--holdout", "0.05"]) == 0
    assert main(["prepare", str(train), "--column", "sentence", "--tokenizer", vocab, "-o", str(tmp_path / "domain"),
                 "--holdout", "0.05"]) == 0
    args = ["pretrain", "--config", "electra-mini", "--data", str(tmp_path / "general"),
            "--mix", f"{tmp_path / 'domain'}=3", "-o", str(tmp_path / "pt")]
    for s in SMALL:
        args += ["--set", s]
    assert main(args) == 0
    evals = read_metrics(tmp_path / "pt" / "metrics.jsonl", "eval")
    assert [e["step"] for e in evals] == [20, 40] and "rtd_accuracy" in evals[-1]
    assert (tmp_path / "pt" / "final" / "generator" / "config.json").is_file()

    run = tmp_path / "sst"
    assert main(["finetune", "classification", "--model", str(tmp_path / "pt" / "final"), "--train", str(train),
                 "--dev", str(dev), "-o", str(run), "--adapt-steps", "20", "--set", "adapt.batch_size=16",
                 "--set", "adapt.max_length=64", "--set", "train.max_steps=30", "--set", "train.eval_every=15",
                 "--set", "train.progress=false", "--set", "max_length=64"]) == 0
    adapt_evals = read_metrics(run / "adapt" / "run" / "metrics.jsonl", "train")
    assert adapt_evals and adapt_evals[-1]["step"] == 20
    texts = (run / "adapt" / "texts.txt").read_text(encoding="utf-8")
    assert sst[1].split("\t")[0].strip() in texts and sst[-1].split("\t")[0].strip() not in texts  # train only
    adapted = load(run / "adapt" / "run" / "final")
    tuned = load(run / "best")
    assert tuned.config.family == "electra" and tuned.task == "sequence-classification"
    assert not bool((adapted.transformer.emb.tok.weight == load(tmp_path / "pt" / "final")
                     .transformer.emb.tok.weight).all())  # adaptation changed the embeddings
    summary = json.loads((run / "finetune.json").read_text())
    assert summary["config"]["adapt"]["steps"] == 20
