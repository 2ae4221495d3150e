"""Every reader, on any bytes, ends in data or a clear error naming the file (and the line where
there is one): never a traceback, never a hang. Plus the malformed rows that must never become
data: a stray tab, an unclosed quote, an extra CSV field, labels of mixed types, a dev label
training never saw, and non-finite scores.

The property tests are time-boxed (a deadline per example, few examples, derandomized so a run
is repeatable); each file is small, except the long-line cases, which are checked once each.
"""

from __future__ import annotations

import gzip
import json
import math
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plmkit.data.io import Corpus
from plmkit.data.tasks import (
    LabelMap, read_classification, read_conll, read_parallel, read_seq2seq_jsonl, read_seq2seq_table, read_squad,
)
from plmkit.errors import DataError, UserError

PROPERTY = settings(max_examples=50, deadline=timedelta(seconds=5), derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Characters that make formats interesting: delimiters, quotes, escapes, brackets, a BOM, CJK,
# a character that is not UTF-8 on its own (a lone surrogate, written with surrogatepass).
ALPHABET = list("ab1 ,;\t\"'\\{}[]:\n\r-O") + ["B-PER", "I-LOC", "\ufeff", "中", "é", "\ud800", "NaN", "null"]
TEXTS = st.lists(st.sampled_from(ALPHABET), max_size=60).map("".join)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXTS,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXTS, inner, max_size=3),
                           max_leaves=8)
KEYS = st.sampled_from(["text", "label", "sentence", "source", "target", "data", "other"])
JSONL = st.lists(st.dictionaries(KEYS, JSON_VALUES, max_size=4).map(json.dumps) | TEXTS, max_size=6).map("\n".join)
TABLE = st.lists(st.lists(TEXTS, min_size=1, max_size=4).map(lambda fields: st_join(fields)), max_size=6)


def st_join(fields: list[str]) -> str:
    return "\t".join(fields) if len(fields) % 2 else ",".join(fields)


CONTENT = st.one_of(
    st.binary(max_size=200),
    TEXTS.map(lambda t: t.encode("utf-8", "surrogatepass")),
    JSONL.map(lambda t: t.encode("utf-8", "surrogatepass")),
    TABLE.map(lambda rows: ("sentence\tlabel\n" + "\n".join(rows)).encode("utf-8", "surrogatepass")),
    TABLE.map(lambda rows: ("sentence,label\n" + "\n".join(rows)).encode("utf-8", "surrogatepass")),
)


def squad_like() -> st.SearchStrategy[bytes]:
    answer = st.fixed_dictionaries({"text": JSON_VALUES, "answer_start": JSON_VALUES})
    qa = st.fixed_dictionaries({"id": JSON_VALUES, "question": JSON_VALUES, "answers": st.lists(answer, max_size=2)})
    paragraph = st.fixed_dictionaries({"context": JSON_VALUES, "qas": st.lists(qa, max_size=2) | JSON_VALUES})
    article = st.fixed_dictionaries({"paragraphs": st.lists(paragraph, max_size=2) | JSON_VALUES})
    document = st.fixed_dictionaries({"data": st.lists(article, max_size=2) | JSON_VALUES})
    return st.one_of(document.map(lambda d: json.dumps(d).encode("utf-8", "surrogatepass")), CONTENT)


def expect_data_or_clear_error(path: Path, read: Callable[[Path], Any], *others: Path) -> Any:
    """Run a reader on `path` (and `others`); a failure must be a plmkit error whose message starts
    with the file it is about (and, when it names a line, a line that file has)."""
    try:
        return read(path)
    except DataError as e:
        about = {p.name: p for p in (path, *others)}.get(Path(e.path).name)
        assert about is not None and str(e).startswith(f"{e.path}:"), e
        if e.line is not None:
            raw = about.read_bytes() if about.suffix != ".gz" else gzip.decompress(about.read_bytes())
            assert 1 <= e.line <= raw.count(b"\n") + 1, e
        return None
    except UserError as e:  # a setting the file does not fit (no such column, no header)
        assert str(path) in str(e), e
        return None


def write(folder: str, name: str, content: bytes) -> Path:
    path = Path(folder) / name
    if name.endswith(".gz"):
        content = gzip.compress(content)
    path.write_bytes(content)
    return path


CORPUS_FILES = ["c.txt", "c.jsonl", "c.json", "c.csv", "c.tsv", "c.txt.gz", "c.jsonl.gz"]


@PROPERTY
@given(content=CONTENT, name=st.sampled_from(CORPUS_FILES), split=st.booleans())
def test_corpus_reader_on_any_bytes(content: bytes, name: str, split: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write(folder, name, content)
        docs = expect_data_or_clear_error(path, lambda p: list(Corpus(p, split_sentences=split)))
        assert docs is None or all(isinstance(s, str) and s for d in docs for s in d)
        skipping = Corpus(path, errors="skip")
        expect_data_or_clear_error(path, lambda p: list(skipping))


@PROPERTY
@given(content=CONTENT, name=st.sampled_from(["d.tsv", "d.csv", "d.jsonl", "d.json", "d.tsv.gz"]),
       pair=st.booleans())
def test_classification_reader_on_any_bytes(content: bytes, name: str, pair: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write(folder, name, content)
        column = "text" if name.startswith("d.json") else "sentence"
        examples = expect_data_or_clear_error(
            path, lambda p: read_classification(p, column, "label", "other" if pair else None))
        for e in examples or []:
            assert isinstance(e.text, str) and e.label and e.where.startswith(str(path))


@PROPERTY
@given(content=CONTENT)
def test_conll_reader_on_any_bytes(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write(folder, "n.txt", content)
        for sentence in expect_data_or_clear_error(path, lambda p: read_conll(p, scheme="bio")) or []:
            assert len(sentence.words) == len(sentence.tags) > 0


@PROPERTY
@given(content=squad_like())
def test_squad_reader_on_any_bytes(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write(folder, "q.json", content)
        for example in expect_data_or_clear_error(path, read_squad) or []:
            assert isinstance(example.context, str) and all(isinstance(a, str) for a in example.answers)


@PROPERTY
@given(content=CONTENT, other=CONTENT, kind=st.sampled_from(["jsonl", "tsv", "csv", "parallel"]))
def test_seq2seq_readers_on_any_bytes(content: bytes, other: bytes, kind: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        if kind == "jsonl":
            path = write(folder, "s.jsonl", content)
            rows = expect_data_or_clear_error(path, lambda p: read_seq2seq_jsonl(p, "source", ["target", "text"]))
        elif kind == "parallel":
            path, target = write(folder, "s.en", content), write(folder, "s.de", other)
            rows = expect_data_or_clear_error(path, lambda p: read_parallel(p, target), target)
        else:
            path = write(folder, f"s.{kind}", content)
            rows = expect_data_or_clear_error(path, lambda p: read_seq2seq_table(p, 0, 1))
        assert all(isinstance(r.source, str) and r.references for r in rows or [])


@pytest.mark.parametrize("name,read", [
    ("c.txt", lambda p: list(Corpus(p, split_sentences=True))),
    ("c.jsonl", lambda p: list(Corpus(p))),
    ("d.tsv", lambda p: read_classification(p)),
    ("d.csv", lambda p: read_classification(p)),
    ("n.txt", lambda p: read_conll(p)),
    ("s.jsonl", lambda p: read_seq2seq_jsonl(p, "source", "target")),
    ("q.json", read_squad),
])
def test_a_very_long_line_is_read_in_bounded_time(tmp_path: Path, name: str, read) -> None:
    line = ("Mr. A. word, \"quoted\" text. " * 80_000)[:2_000_000]  # 2 MB on one line
    content = {"c.jsonl": json.dumps({"text": line}), "s.jsonl": json.dumps({"source": line, "target": "t"}),
               "q.json": json.dumps({"data": [{"paragraphs": [{"context": line, "qas": []}]}]}),
               "d.tsv": f"sentence\tlabel\n{line}\tpos",
               "d.csv": 'sentence,label\n"{}",pos'.format(line.replace('"', '""')),
               "n.txt": f"{line.replace(' ', '_')} O"}.get(name, line)
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    started = time.perf_counter()
    result = expect_data_or_clear_error(path, read)
    assert time.perf_counter() - started < 30  # linear: seconds at most on a loaded machine
    assert result is not None


@pytest.mark.parametrize("name,content", [
    ("d.jsonl", "[" * 100_000), ("q.json", '{"data": ' + "[" * 100_000), ("d.csv", "sentence,label\na\x00b,c\n"),
    ("d.tsv", "\ufeff"), ("d.jsonl", '{"sentence": "a", "label": Infinity}'), ("d.tsv", "sentence\tlabel\n\r\n\t\n"),
])
def test_nasty_inputs_end_in_data_or_a_clear_error(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    read = read_squad if name == "q.json" else read_classification
    result = expect_data_or_clear_error(path, read)  # deep nesting, NaN/Infinity: errors; a NUL byte: text
    assert result is None or all(isinstance(e.text if hasattr(e, "text") else e.context, str) for e in result)


# --------------------------------------------------------------------------- malformed rows


@pytest.mark.parametrize("content,message", [
    ("sentence\tlabel\na fine film\tpos\nan extra\ttab\tneg\n",
     r"d\.tsv:3: malformed row: 3 fields but the header has 2"),
    ("sentence\tlabel\nno label\n", r"d\.tsv:2: malformed row: 1 fields but the header has 2"),
])
def test_tsv_rows_with_a_stray_tab_are_malformed(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "d.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_classification(path)


def test_csv_quotes_and_extra_fields_are_malformed(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('sentence,label\n"fine",pos\n"never closed,neg\nnext,pos\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:3: malformed CSV: a quoted field is never closed"):
        read_classification(path)
    path.write_text('sentence,label\n"fine",pos\na, b,neg\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:3: malformed row: 3 fields but the header has 2"):
        read_classification(path)
    path.write_text('sentence,label\n"fine",pos\n"a "quoted" word",neg\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:3: malformed CSV"):
        read_classification(path)


def test_labels_of_mixed_types_are_malformed_not_new_classes(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n{"text": "c", "label": "1"}\n',
                    encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:3: label '1' is text but the label on line 1 is an integer"):
        read_classification(path, "text")
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1.0}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: label 1\.0 is a decimal number"):
        read_classification(path, "text")
    path.write_text('{"text": "a", "label": NaN}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:1: invalid JSON: NaN is not a JSON number"):
        read_classification(path, "text")
    path.write_text('{"text": "\\ud800", "label": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:1: invalid Unicode"):
        read_classification(path, "text")


def test_a_dev_label_unseen_in_training_is_an_error_unless_allowed() -> None:
    train = [("neg", "t.tsv:2"), ("pos", "t.tsv:3")]
    dev = [("pos", "d.tsv:2"), ("neutral", "d.tsv:3")]
    with pytest.raises(DataError, match=r"d\.tsv:3: dev label 'neutral' never occurs in the training data"):
        LabelMap.for_training(train, dev)
    assert LabelMap.for_training(train, dev, new_dev_labels="add").id2label == ("neg", "neutral", "pos")
    assert LabelMap.for_training(train, dev[:1]).id2label == ("neg", "pos")
    with pytest.raises(DataError, match=r"d\.tsv:3: label 'neutral' is not one of \['neg', 'pos'\]"):
        LabelMap.for_training(train, dev, labels=["neg", "pos"], new_dev_labels="add")


def test_finetuning_refuses_an_unseen_dev_label(tmp_path: Path) -> None:
    from plmkit.recipes.tasks_classification import ClassificationConfig, label_map_for, read_examples

    (tmp_path / "t.tsv").write_text("sentence\tlabel\na\tneg\nb\tpos\n", encoding="utf-8")
    (tmp_path / "d.tsv").write_text("sentence\tlabel\nc\tneutral\n", encoding="utf-8")
    cfg = ClassificationConfig(model="bert-tiny", train_file=str(tmp_path / "t.tsv"), out=str(tmp_path / "o"))
    train, dev = read_examples(cfg, cfg.train_file), read_examples(cfg, str(tmp_path / "d.tsv"))
    with pytest.raises(DataError, match=r"d\.tsv:2: dev label 'neutral'.*new_dev_labels=add"):
        label_map_for(cfg, train, dev)
    cfg.new_dev_labels = "add"
    assert label_map_for(cfg, train, dev).id2label == ("neg", "neutral", "pos")


def test_inference_never_returns_non_finite_scores(tiny, tmp_path: Path) -> None:
    from plmkit.data.tokenizer import Tokenizer
    from plmkit.infer.base import NonFiniteScores
    from plmkit.infer.pipeline import pipeline

    tok = Tokenizer.train(iter(["a good film", "a bad film"] * 5), kind="wordpiece", vocab_size=60)
    model = tiny("bert-tiny", "sequence-classification", vocab_size=tok.vocab_size)
    clf = pipeline("text-classification", model, tokenizer=tok)
    assert all(math.isfinite(r["score"]) for r in clf(["a good film", "a bad film"], top_k=None))
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteScores, match="non-finite scores"):
        clf("a good film")
    embed = pipeline("feature-extraction", model, tokenizer=tok)
    with torch.no_grad():
        next(iter(model.transformer.parameters())).fill_(float("inf"))
    with pytest.raises(NonFiniteScores):
        embed("a good film")


def test_unknown_formats_and_columns_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match=r"data\.xlsx: cannot tell the format"):
        read_classification(path)
    jsonl = tmp_path / "data.json"  # a .json file of JSON Lines reads as JSON Lines
    jsonl.write_text('{"sentence": "a", "label": "x"}\n{"sentence": "b", "label": "y"}\n', encoding="utf-8")
    assert [e.label for e in read_classification(jsonl)] == ["x", "y"]
    array = tmp_path / "array.json"  # and a JSON array by the line each record starts on
    array.write_text('[\n  {"sentence": "a", "label": "x"},\n  {"sentence": "b"}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"array\.json:3: missing field 'label': fields are sentence"):
        read_classification(array)
