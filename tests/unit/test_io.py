"""Corpus readers: formats, sentence splitting, the encoding policy and errors naming file:line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from plmkit.data.io import Corpus, CorpusError, expand_inputs, split_sentences


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# ---- formats ------------------------------------------------------------------------------------


def test_txt_blank_lines_end_documents(tmp_path: Path) -> None:
    f = write(tmp_path / "c.txt", "a one.\na two.\n\n\n  \nb one.\r\nb two.\n\nc one.")
    corpus = Corpus(f)
    assert list(corpus) == [["a one.", "a two."], ["b one.", "b two."], ["c one."]]
    assert (corpus.stats.documents, corpus.stats.sentences) == (3, 5)


def test_txt_sentence_splitting_option(tmp_path: Path) -> None:
    f = write(tmp_path / "c.txt", "Dr. Who came. He left! Why?\n他来了。她走了！\n")
    assert list(Corpus(f)) == [["Dr. Who came. He left! Why?", "他来了。她走了！"]]
    assert list(Corpus(f, split_sentences=True)) == [["Dr. Who came.", "He left!", "Why?", "他来了。", "她走了！"]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
        ("It is H. americanus, e.g. the lobster. Yes!", ["It is H. americanus, e.g. the lobster.", "Yes!"]),
        ("It cost $3.50 in 1990. Then it rose.", ["It cost $3.50 in 1990.", "Then it rose."]),
        ('He said "stop." She did not.', ['He said "stop."', "She did not."]),
        ("wait... and then? nothing", ["wait... and then? nothing"]),
        ("他说：“你好。”我们走吧！好？", ["他说：“你好。”", "我们走吧！", "好？"]),
        ("Good!好的。", ["Good!", "好的。"]),
        ("", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_jsonl_field_string_or_list(tmp_path: Path) -> None:
    rows = [{"text": "line one\nline two", "id": 1}, {"text": ["s1", "s2"]}, {"text": "   "}, {"text": "last"}]
    f = write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert list(Corpus(f)) == [["line one", "line two"], ["s1", "s2"], ["last"]]
    g = write(tmp_path / "d.jsonl", json.dumps({"body": "x"}) + "\n")
    assert list(Corpus(g, field="body")) == [["x"]]


def test_json_array_and_gzip(tmp_path: Path) -> None:
    data = [{"paragraphs": ["床前明月光，", "疑是地上霜。"]}, {"paragraphs": ["举头望明月。"]}]
    f = tmp_path / "poems.json.gz"
    with gzip.open(f, "wt", encoding="utf-8") as out:
        json.dump(data, out, ensure_ascii=False)
    assert list(Corpus(f, field="paragraphs")) == [["床前明月光，", "疑是地上霜。"], ["举头望明月。"]]


def test_tsv_and_csv_columns(tmp_path: Path) -> None:
    tsv = write(tmp_path / "c.tsv", 'label\ttext\n1\tgood "film"\n0\tbad one\n')
    assert list(Corpus(tsv, column="text")) == [['good "film"'], ["bad one"]]
    assert list(Corpus(tsv, column=1)) == [['good "film"'], ["bad one"]]
    assert list(Corpus(tsv, field="text")) == [['good "film"'], ["bad one"]]
    csv_file = write(tmp_path / "c.csv", '3,"A, b\nc"\n4,plain\n')
    assert list(Corpus(csv_file, column=1, header=False)) == [["A, b", "c"], ["plain"]]


def test_directories_and_globs(tmp_path: Path) -> None:
    write(tmp_path / "b.txt", "b\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "a.jsonl", '{"text": "a"}\n')
    write(tmp_path / "notes.md", "ignored in folders\n")
    write(tmp_path / ".hidden.txt", "ignored\n")
    assert [p.name for p in expand_inputs(tmp_path)] == ["b.txt", "a.jsonl"]
    assert list(Corpus(tmp_path)) == [["b"], ["a"]]
    assert list(Corpus(str(tmp_path / "**" / "*.jsonl"))) == [["a"]]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        Corpus(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        Corpus(str(tmp_path / "*.csv"))


def test_reading_is_lazy(tmp_path: Path) -> None:
    lines = ["first doc", ""] + ["filler"] * 1000
    f = write(tmp_path / "c.txt", ("\n".join(lines) + "\n").encode() + b"bad \xff\n")
    docs = iter(Corpus(f))
    assert next(docs) == ["first doc"]  # the bad line far below is not read yet
    with pytest.raises(CorpusError, match=r"c\.txt:1003: invalid UTF-8"):
        list(docs)


# ---- encoding policy and errors -------------------------------------------------------------------


def test_bom_is_tolerated(tmp_path: Path) -> None:
    f = write(tmp_path / "c.txt", b"\xef\xbb\xbfhello\n")
    assert list(Corpus(f)) == [["hello"]]


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    f = write(tmp_path / "corpus.txt", "ok\nok\n".encode() + "caf\u00e9\n".encode("latin-1") + b"fine\n")
    with pytest.raises(CorpusError, match=r"corpus\.txt:3: invalid UTF-8: byte 0xe9 at column 4"):
        list(Corpus(f))
    corpus = Corpus(f, errors="skip")
    assert list(corpus) == [["ok", "ok", "fine"]]
    assert corpus.stats.skipped == {"invalid UTF-8": 1}
    assert corpus.stats.examples[0].startswith(f"{f}:3: invalid UTF-8")


def test_utf16_gets_a_hint(tmp_path: Path) -> None:
    f = write(tmp_path / "c.txt", "hello\n".encode("utf-16"))
    with pytest.raises(CorpusError, match="UTF-16"):
        list(Corpus(f))


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    f = write(tmp_path / "corpus.jsonl",
              '{"text": "a"}\n{"text": "b"}\n{"text": "c",\n[1]\n{"other": 1}\n{"text": 5}\n{"text": "\\ud800"}\n')
    with pytest.raises(CorpusError, match=r"corpus\.jsonl:3: invalid JSON: "):
        list(Corpus(f))
    corpus = Corpus(f, errors="skip")
    assert list(corpus) == [["a"], ["b"]]
    assert corpus.stats.skipped == {
        "invalid JSON": 1, "not a JSON object": 1, "missing field 'text'": 1, "field 'text' is not text": 1,
        "invalid Unicode": 1,
    }
    assert "skipped" in corpus.stats.summary()


def test_missing_field_and_column_errors(tmp_path: Path) -> None:
    f = write(tmp_path / "c.jsonl", '{"body": "a"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:1: missing field 'text': fields are body"):
        list(Corpus(f, field="text"))
    g = write(tmp_path / "g.jsonl", '{"id": 1, "note": "a"}\n')
    with pytest.raises(CorpusError, match=r"g\.jsonl:1: no text column among id, note; name it with --text-column"):
        list(Corpus(g))
    tsv = write(tmp_path / "c.tsv", "label\tsentence\n1\tok\n2\n")
    with pytest.raises(CorpusError, match=r"c\.tsv:1: no column 'text' in the header \(columns: label, sentence\)"):
        list(Corpus(tsv, column="text"))
    with pytest.raises(CorpusError, match=r"c\.tsv:3: malformed row: 1 fields but the header has 2"):
        list(Corpus(tsv, column="sentence"))


def test_empty_corpus_is_an_error(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(CorpusError, match=r"empty\.txt: empty corpus"):
        list(Corpus(empty))
    blank = write(tmp_path / "blank.jsonl", "\n\n")
    with pytest.raises(CorpusError, match="blank.jsonl: empty corpus"):
        list(Corpus(blank))
    bad = write(tmp_path / "bad.txt", b"\xff\n")
    with pytest.raises(CorpusError, match=r"bad\.txt: empty corpus.*skipped 1 \(invalid UTF-8\)"):
        list(Corpus(bad, errors="skip"))
    write(tmp_path / "full.txt", "text\n")
    corpus = Corpus([empty, tmp_path / "full.txt"])
    assert list(corpus) == [["text"]]
    assert corpus.stats.empty_files == [str(empty)]


def test_corrupt_gzip(tmp_path: Path) -> None:
    f = write(tmp_path / "c.txt.gz", b"not gzip at all")
    with pytest.raises(CorpusError, match=r"c\.txt\.gz: corrupt gzip file"):
        list(Corpus(f))


# ---- real data ------------------------------------------------------------------------------------


def test_wikitext_paragraphs(shared_data: Path) -> None:
    path = shared_data / "wikitext-2" / "valid.txt"
    lines = path.read_text(encoding="utf-8").split("\n")
    non_blank = [line for line in lines if line.strip()]
    runs = sum(1 for i, line in enumerate(lines) if line.strip() and (i == 0 or not lines[i - 1].strip()))
    corpus = Corpus(path)
    docs = list(corpus)
    assert (corpus.stats.documents, corpus.stats.sentences) == (runs, len(non_blank))
    assert docs[0] == ["= Homarus gammarus ="]
    split = Corpus(path, split_sentences=True)
    assert sum(len(d) for d in split) > 2 * len(non_blank)
    assert "It is closely related to the American lobster , H. americanus ." in next(
        d for d in Corpus(path, split_sentences=True) if len(d) > 1)


def test_real_chinese_sources(shared_data: Path) -> None:
    reviews = Corpus(shared_data / "chnsenticorp" / "train.tsv", column="text_a", split_sentences=True)
    docs = list(reviews)
    assert reviews.stats.documents == 9600  # the README's count of training examples
    assert docs[0][0] == "选择珠江花园的原因就是方便，有电动扶梯直接到达海边，周围餐馆、食廊、商场、超市、摊位一应俱全。"
    poems = Corpus(shared_data / "chinese-poetry" / "shijing", field="content")
    assert sum(1 for _ in poems) == 305  # the README's count of poems
