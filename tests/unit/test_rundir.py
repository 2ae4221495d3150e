"""The run directory: one search order for "the model of this path", for every entry point; the
recipe file; files written whole or not at all; and the one table of task vocabularies."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

import plmkit
from plmkit import heads, rundir
from plmkit.cli import main
from plmkit.config import ModelConfig
from plmkit.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    texts = ["a gripping funny film", "a dull film", "the plot was long", "once upon a time"] * 5
    return Tokenizer.train(iter(texts), kind="wordpiece", vocab_size=80)


def save(tiny, folder: Path, tok: Tokenizer, preset: str = "bert-tiny", task: str = "masked-lm", **changes) -> Path:
    model = tiny(preset, task, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, **changes)
    return model.save_pretrained(folder, tok)


def test_model_dir_search_order(tiny, tok, tmp_path):
    run = tmp_path / "run"
    save(tiny, run, tok)  # a model folder that is also a run: its best/ and final/ come first
    assert rundir.model_dir(run) == run
    save(tiny, run / "final", tok, task="feature-extraction")
    assert rundir.model_dir(run) == run / "final"
    save(tiny, run / "best", tok, task="sequence-classification")
    assert rundir.model_dir(run) == run / "best" and rundir.model_dir(run / "final") == run / "final"
    assert plmkit.load(run).task == "sequence-classification"  # plmkit.load follows the same order
    with pytest.raises(FileNotFoundError, match="no such run or model directory"):
        rundir.model_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json here nor in .*best or .*final"):
        plmkit.load(tmp_path / "empty")


def test_every_entry_point_takes_a_run_directory(tiny, tok, tmp_path, capsys):
    gpt_run, clf_run = tmp_path / "gpt", tmp_path / "clf"
    save(tiny, gpt_run / "final", tok, "gpt-tiny", "causal-lm", eos_token_id=tok.sep_id, bos_token_id=tok.cls_id)
    save(tiny, clf_run / "best", tok, task="sequence-classification", id2label={0: "neg", 1: "pos"})
    assert main(["generate", str(gpt_run), "a dull", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("a dull")
    assert main(["explain", str(clf_run), "a gripping film", "-o", str(tmp_path / "explain")]) == 0
    assert (tmp_path / "explain" / "attribution.html").is_file() and "target:" in capsys.readouterr().out
    assert plmkit.pipeline("auto", gpt_run).task == "text-generation"
    assert plmkit.pipeline("auto", clf_run)("a dull film")["label"] in ("neg", "pos")
    (clf_run / "data.tsv").write_text("sentence\tlabel\na dull film\tneg\na gripping film\tpos\n", encoding="utf-8")
    assert main(["eval", str(clf_run), "--data", str(clf_run / "data.tsv")]) == 0  # task from the head
    assert 0.0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1.0


def test_recipe_file_and_recorded_pipeline_options(tiny, tok, tmp_path):
    run = tmp_path / "run"
    save(tiny, run / "best", tok, task="sequence-classification")
    record = rundir.recipe_record("classification", {"max_length": 7}, {"max_length": 7})
    rundir.write_recipe(run, record)
    assert rundir.read_recipe(run / "best") == record  # a model folder finds its run's file
    assert rundir.recipe_task(run / "best") == "classification"
    assert plmkit.pipeline("auto", run).defaults["max_length"] == 7
    assert plmkit.pipeline("text-classification", run, max_length=9).defaults["max_length"] == 9
    assert plmkit.pipeline("feature-extraction", run).defaults["max_length"] is None  # settings of its own task only
    (run / "finetune.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"finetune\.json: not a valid recipe file"):
        plmkit.pipeline("auto", run)
    assert rundir.read_recipe(tmp_path / "nothing") is None
    with pytest.raises(FileNotFoundError, match="not a plmkit fine-tuning run"):
        rundir.read_recipe(tmp_path / "nothing", required=True)


def test_rows_and_json_are_written_whole_or_not_at_all(tmp_path):
    rows = [{"text": "a, \"b\"", "tags": ["O", "B-X"]}, {"text": "c", "score": 0.5}]
    for suffix in (".jsonl", ".csv", ".tsv"):
        path = rundir.write_rows(rows, tmp_path / f"p{suffix}")
        assert path.read_text(encoding="utf-8").count("\n") == (2 if suffix == ".jsonl" else 3)
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "text,tags,score"
    with pytest.raises(ValueError, match="must end in .jsonl"):
        rundir.write_rows(rows, tmp_path / "p.txt")
    before = (tmp_path / "p.jsonl").read_bytes()
    with pytest.raises(TypeError):
        rundir.write_rows([*rows, {"bad": object()}], tmp_path / "p.jsonl")
    assert (tmp_path / "p.jsonl").read_bytes() == before  # the old file stays whole
    rundir.write_json(tmp_path / "r.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "p.jsonl", "p.tsv", "r.json"]  # no temp files


# --------------------------------------------------------------------------- task vocabularies


def test_one_table_relates_the_task_vocabularies():
    from plmkit.data.pretraining import ALIASES, OBJECTIVES
    from plmkit.infer.pipeline import PIPELINES
    from plmkit.models import MODELS, TASKS
    from plmkit.models.hf_compat import _CLASS_SUFFIX
    from plmkit.recipes.finetune import RECIPES
    from plmkit.recipes.pretrain import OBJECTIVE_OF_FAMILY

    assert set(TASKS) == set(heads.HEADS)  # every head the models build is in the table
    for arch, head in MODELS:
        assert heads.pipeline_task(head=head, arch=arch) in PIPELINES
    assert set(heads.PIPELINE_TASKS) == set(PIPELINES)
    assert set(RECIPES) == set(heads.RECIPE_PIPELINES)
    for name, recipe in RECIPES.items():
        assert recipe.pipeline_task in PIPELINES and recipe.heads == heads.recipe_heads(name)
    assert heads.default_recipe("causal-lm") == "lm" and heads.default_recipe("seq2seq-lm") == "summarization"
    assert heads.hf_class_suffixes() == _CLASS_SUFFIX  # what models/hf_compat.py should derive from
    families = set(typing.get_args(typing.get_type_hints(ModelConfig)["family"]))
    assert set(heads.FAMILY_OBJECTIVES) == families
    assert heads.FAMILY_OBJECTIVES == OBJECTIVE_OF_FAMILY  # what recipes/pretrain.py should derive from
    assert set(heads.FAMILY_OBJECTIVES.values()) <= set(OBJECTIVES) | set(ALIASES)
