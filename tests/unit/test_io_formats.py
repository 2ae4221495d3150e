"""Inputs users have: plain text files, Parquet, Hugging Face datasets folders, text columns found
by name, label names; every reader's error names the file (and line or row)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from plmkit.data.io import MissingColumnError, find_column, read_table, table_columns, TEXT_COLUMNS
from plmkit.data.corpus import Corpus, expand_inputs
from plmkit.errors import DataError
from plmkit.extras import MissingExtraError
from plmkit.recipes.tasks_base import parse_config
from plmkit.recipes.tasks_classification import ClassificationConfig, read_examples

pa = pytest.importorskip("pyarrow", reason="the parquet extra (pyarrow) is not installed")
import pyarrow.parquet as pq  # noqa: E402


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def write_dataset_folder(folder: Path, columns: dict[str, list], shards: int = 1) -> Path:
    """A folder as `datasets.Dataset.save_to_disk` writes it: Arrow IPC streams + state.json."""
    folder.mkdir(parents=True)
    table = pa.table(columns)
    names = []
    per = -(-table.num_rows // shards)
    for i in range(shards):
        name = f"data-{i:05d}-of-{shards:05d}.arrow"
        with pa.ipc.new_stream(folder / name, table.schema) as writer:
            writer.write_table(table.slice(i * per, per))
        names.append({"filename": name})
    (folder / "state.json").write_text(json.dumps({"_data_files": names, "_fingerprint": "x", "_split": "train"}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))
    return folder


def cfg(tmp_path: Path, **fields) -> ClassificationConfig:
    return parse_config(ClassificationConfig, model="bert-tiny", train_file="t", out=str(tmp_path / "o"), **fields)


def test_a_txt_file_is_one_text_per_line(tmp_path):
    texts = tmp_path / "new.txt"
    texts.write_text("a gripping, funny film\n\n  dull and long  \n")
    assert list(read_table(texts, ["text"])) == [(1, ["a gripping, funny film"]), (3, ["dull and long"])]
    assert table_columns(texts) == ["text"]
    examples = read_examples(cfg(tmp_path), texts, labeled=False)  # what `plmkit predict` reads: no --set needed
    assert [(e.text, e.label, e.where) for e in examples] == [
        ("a gripping, funny film", "", f"{texts}:1"), ("dull and long", "", f"{texts}:3")]
    with pytest.raises(MissingColumnError, match=r"new\.txt: a \.txt file holds one text per line and no labels"):
        read_examples(cfg(tmp_path), texts, labeled=True)
    with pytest.raises(MissingColumnError, match=r"no column 'review': a \.txt file holds one text per line"):
        list(read_table(texts, ["review"]))


@pytest.mark.parametrize("header, expected", [
    (["id", "review", "stars"], "review"), (["Sentence", "label"], "Sentence"), (["text_a", "label"], "text_a"),
    (["id", "body"], "body"), (["a", "b"], None)])
def test_text_column_found_by_its_usual_names(header, expected):
    assert find_column("f.csv", header, TEXT_COLUMNS, "text", "--text-column") == expected


def test_classification_columns_found_by_name_in_csv_jsonl_and_parquet(tmp_path):
    (tmp_path / "r.csv").write_text("id,review,sentiment\n1,great fun,pos\n2,awful,neg\n")
    (tmp_path / "r.jsonl").write_text('{"content": "great fun", "category": "pos"}\n')
    write_parquet(tmp_path / "r.parquet", {"id": [1, 2], "text": ["great fun", "awful"], "label": [1, 0]})
    for name, first in (("r.csv", ("great fun", "pos")), ("r.jsonl", ("great fun", "pos")),
                        ("r.parquet", ("great fun", "1"))):
        examples = read_examples(cfg(tmp_path), tmp_path / name)
        assert (examples[0].text, examples[0].label) == first, name
    (tmp_path / "odd.csv").write_text("id,note,grade\n1,x,2\n")
    with pytest.raises(MissingColumnError, match=r"odd\.csv:1: no text column among id, note, grade: name it with "
                                                 r"--text-column"):
        read_examples(cfg(tmp_path), tmp_path / "odd.csv")
    assert read_examples(cfg(tmp_path, text_column="note", label_column="grade"), tmp_path / "odd.csv")[0].label == "2"


def test_labels_written_as_ids_get_names(tmp_path):
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\ngood fun\t1\nboring\t0\n")
    named = cfg(tmp_path, labels="negative,positive")  # what --set labels=negative,positive gives
    assert named.labels == ["negative", "positive"]
    assert [e.label for e in read_examples(named, data)] == ["positive", "negative"]
    assert [e.label for e in read_examples(cfg(tmp_path), data)] == ["1", "0"]
    (tmp_path / "three.tsv").write_text("sentence\tlabel\na\t2\n")
    assert [e.label for e in read_examples(named, tmp_path / "three.tsv")] == ["2"]  # not an id of a name: kept


def test_parquet_table_and_corpus(tmp_path):
    path = write_parquet(tmp_path / "docs.parquet", {"title": ["A", "B", "C"],
                                                     "content": ["First doc. Two lines.", "Second.", None]})
    assert table_columns(path) == ["title", "content"]
    assert list(read_table(path, ["content", 0]))[:2] == [(1, ["First doc. Two lines.", "A"]), (2, ["Second.", "B"])]
    with pytest.raises(DataError, match=r"docs\.parquet:3: column 'content' is not text: got null"):
        list(Corpus(path))
    corpus = Corpus(path, errors="skip")
    assert [doc for doc in corpus] == [["First doc. Two lines."], ["Second."]]  # text column found by name
    with pytest.raises(MissingColumnError, match=r"docs\.parquet: no column 'body' \(columns: title, content\)"):
        list(read_table(path, ["body"]))


def test_a_datasets_folder_reads_like_a_table(tmp_path):
    folder = write_dataset_folder(tmp_path / "sst2" / "train", {"sentence": [f"text {i}" for i in range(5)],
                                                                "label": [i % 2 for i in range(5)]}, shards=2)
    assert [r for _, (r,) in read_table(folder, ["sentence"])] == [f"text {i}" for i in range(5)]
    assert [n for n, _ in read_table(folder, ["label"])] == [1, 2, 3, 4, 5]  # rows numbered across the shards
    examples = read_examples(cfg(tmp_path), folder)
    assert [e.label for e in examples] == ["0", "1", "0", "1", "0"] and examples[4].where == f"{folder}:5"
    assert expand_inputs([tmp_path / "sst2"]) == [folder]  # a folder of datasets: each one, not its files
    assert sum(1 for _ in Corpus(folder)) == 5


def test_a_datasetdict_folder_asks_for_a_split(tmp_path):
    root = tmp_path / "dd"
    write_dataset_folder(root / "train", {"text": ["a"]})
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    with pytest.raises(DataError, match=r"dd: a DatasetDict folder: name one of its splits, e\.g\. .*dd/train "
                                        r"\(splits: train, test\)"):
        list(read_table(root, ["text"]))


def test_broken_columnar_files_are_data_errors(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        list(read_table(bad, ["text"]))
    folder = write_dataset_folder(tmp_path / "ds", {"text": ["a"]})
    (folder / "data-00000-of-00001.arrow").unlink()
    with pytest.raises(DataError, match=r"data-00000-of-00001\.arrow: missing: state\.json lists it"):
        list(read_table(folder, ["text"]))


def test_without_pyarrow_the_message_names_the_extra(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "x.parquet", {"text": ["a"]})
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingExtraError, match=r"reading x\.parquet needs pyarrow, which is not installed: "
                                                r"pip install 'plmkit\[parquet\]'"):
        list(read_table(path, ["text"]))


def test_prepare_tokenizes_parquet_and_datasets_folders(tmp_path):
    from plmkit.data.shard_set import ShardSet
    from plmkit.data.shards import prepare
    from plmkit.data.tokenizer import Tokenizer

    texts = [f"document number {i} has some words in it ." for i in range(30)]
    Tokenizer.train(texts, kind="wordpiece", vocab_size=120).save(tmp_path / "tok")
    write_parquet(tmp_path / "a.parquet", {"id": list(range(20)), "text": texts[:20]})
    write_dataset_folder(tmp_path / "more" / "train", {"sentence": texts[20:]})
    out = prepare([tmp_path / "a.parquet", tmp_path / "more"], tmp_path / "tok", tmp_path / "shards", holdout=0.0,
                  progress=False)
    assert ShardSet.open(out, "train").num_documents == 30
    again = prepare([tmp_path / "a.parquet", tmp_path / "more"], tmp_path / "tok", tmp_path / "shards", holdout=0.0,
                    progress=False)  # the same inputs: reused, not rebuilt
    assert again == out
