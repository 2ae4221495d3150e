"""Token shards: round trip to the tokenizer's ids (uint16 and uint32), word starts, held-out
split, reuse of a built folder, parallel workers, errors, and the `plmkit prepare` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, normalizers, pre_tokenizers

from plmkit.cli import main as plmkit_main
from plmkit.data import shards as shards_module
from plmkit.data.io import Corpus, CorpusError, is_cjk
from plmkit.data.shards import ShardSet, prepare
from plmkit.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def vocab(shared_data: Path) -> Path:
    return shared_data / "vocab"


@pytest.fixture(scope="module")
def wiki_slice(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first ~400 lines of WikiText-2 valid (a few articles)."""
    lines = (shared_data / "wikitext-2" / "valid.txt").read_text(encoding="utf-8").split("\n")[:400]
    path = tmp_path_factory.mktemp("wiki") / "wiki.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def expected_ids(tok: Tokenizer, docs: list[list[str]]) -> list[list[list[int]]]:
    """Each document's sentences encoded one by one, later ones after a joining space."""
    return [[tok.backend.encode(s if j == 0 else " " + s, add_special_tokens=False).ids for j, s in enumerate(doc)]
            for doc in docs]


def all_docs(out: Path) -> list[list[list[int]]]:
    """Documents of both splits (train first), each a list of sentences of ids."""
    docs = []
    for split in ("train", "eval"):
        s = ShardSet.open(out, split)
        docs += [[x.tolist() for x in s.sentences(i)] for i in range(len(s))]
    return docs


def test_round_trip_uint16(wiki_slice: Path, vocab: Path, tmp_path: Path) -> None:
    out = prepare(wiki_slice, vocab / "bert-base-uncased-vocab.txt", tmp_path / "shards", split_sentences=True,
                  holdout=0.0, workers=1, progress=False)
    tok = Tokenizer.load(vocab / "bert-base-uncased-vocab.txt")
    docs = list(Corpus(wiki_slice, split_sentences=True))
    s = ShardSet.open(out)
    assert s.tokens.dtype == np.uint16 and s.meta["dtype"] == "uint16"
    assert [[x.tolist() for x in s.sentences(i)] for i in range(len(s))] == expected_ids(tok, docs)
    assert np.array_equal(s.document(3), np.concatenate(s.sentences(3)))
    assert s.num_tokens == s.meta["splits"]["train"]["tokens"] == len(s.word_start)
    assert s.specials.cls == tok.cls_id and s.specials.mask == tok.mask_id and s.vocab_size == 30522
    assert Tokenizer.load(s.tokenizer_path).backend.to_str() == tok.backend.to_str()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["build"]["sources"][0]["size"] == wiki_slice.stat().st_size
    assert meta["tokenizer"]["fingerprint"] == shards_module.tokenizer_fingerprint(tok)


def big_vocab_tokenizer(vocab: Path, folder: Path) -> Path:
    """A WordPiece tokenizer with 70,522 entries: BERT's plus extra0..extra39999."""
    words = (vocab / "bert-base-uncased-vocab.txt").read_text(encoding="utf-8").split("\n")[:30522]
    table = {w: i for i, w in enumerate(words)}
    table.update({f"extra{i}": 30522 + i for i in range(40000)})
    backend = RustTokenizer(models.WordPiece(table, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    folder.mkdir()
    backend.save(str(folder / "tokenizer.json"))
    return folder


def test_round_trip_uint32(vocab: Path, tmp_path: Path) -> None:
    tok_dir = big_vocab_tokenizer(vocab, tmp_path / "tok")
    corpus = tmp_path / "c.txt"
    corpus.write_text("the extra39999 and extra5 .\nextra12345 again\n\nsecond doc extra0\n", encoding="utf-8")
    out = prepare(corpus, tok_dir, tmp_path / "shards", holdout=0.0, progress=False)
    s = ShardSet.open(out)
    assert s.tokens.dtype == np.uint32
    tok = Tokenizer.load(tok_dir)
    assert all_docs(out) == expected_ids(tok, list(Corpus(corpus)))
    assert s.tokens.max() == 30522 + 39999
    forced = prepare(corpus, vocab / "bert-base-uncased-vocab.txt", tmp_path / "forced", dtype="uint32",
                     holdout=0.0, progress=False)
    assert ShardSet.open(forced).tokens.dtype == np.uint32
    with pytest.raises(ValueError, match="uint16 cannot hold"):
        prepare(corpus, tok_dir, tmp_path / "bad", dtype="uint16", progress=False)


def test_word_starts_english(wiki_slice: Path, vocab: Path, tmp_path: Path) -> None:
    out = prepare(wiki_slice, vocab / "bert-base-uncased-vocab.txt", tmp_path / "s", holdout=0.0, progress=False)
    s = ShardSet.open(out)
    tok = Tokenizer.load(s.tokenizer_path)
    pieces = [tok.backend.id_to_token(int(i)) for i in s.tokens[:20000]]
    continuing = np.asarray([p.startswith("##") for p in pieces])
    assert continuing.any()
    assert np.array_equal(s.word_start[:20000] == 0, continuing)
    gpt = prepare(wiki_slice, vocab / "gpt2-vocab.json", tmp_path / "g", holdout=0.0, progress=False)
    g = ShardSet.open(gpt)
    gtok = Tokenizer.load(g.tokenizer_path)
    first = g.sentence(5)
    flags = g.word_start[g.sentence_offsets[5]: g.sentence_offsets[6]]
    words = gtok.decode(first.tolist()).split()
    assert int(flags.sum()) >= len(words)  # punctuation is its own pre-tokenizer word
    pieces = [gtok.backend.id_to_token(int(i)) for i in first]
    assert all(f == 1 for p, f in zip(pieces, flags) if p.startswith("Ġ"))


def chinese_corpus(shared_data: Path, folder: Path, rows: int = 40) -> Path:
    lines = (shared_data / "chnsenticorp" / "dev.tsv").read_text(encoding="utf-8").split("\n")[: rows + 1]
    path = folder / "zh.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_word_starts_chinese_with_jieba(shared_data: Path, vocab: Path, tmp_path: Path) -> None:
    jieba = pytest.importorskip("jieba", reason="jieba not installed: Chinese words fall back to characters")
    corpus = chinese_corpus(shared_data, tmp_path)
    out = prepare(corpus, vocab / "bert-base-chinese-vocab.txt", tmp_path / "s", column="text_a",
                  split_sentences=True, holdout=0.0, progress=False)
    s = ShardSet.open(out)
    assert s.meta["build"]["options"]["segmenter"] == "jieba"
    tok = Tokenizer.load(s.tokenizer_path)
    texts = [x if j == 0 else " " + x for d in Corpus(corpus, column="text_a", split_sentences=True) for j, x in enumerate(d)]
    words = 0
    for j, text in enumerate(texts):
        flags = s.word_start[s.sentence_offsets[j]: s.sentence_offsets[j + 1]]
        token_at = {}
        for t, (a, b) in enumerate(tok.backend.encode(text, add_special_tokens=False).offsets):
            token_at.setdefault(a, t)
        position = 0
        for word in jieba.cut(text, HMM=False):
            chars = range(position, position + len(word))
            position += len(word)
            if len(word) < 2 or not all(is_cjk(c) for c in word):
                continue
            assert [flags[token_at[c]] for c in chars] == [1] + [0] * (len(word) - 1), word
            words += 1
    assert words > 100


def test_word_starts_chinese_fallback(shared_data: Path, vocab: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards_module, "segmenter_name", lambda: "cjk-chars")
    corpus = chinese_corpus(shared_data, tmp_path, rows=10)
    out = prepare(corpus, vocab / "bert-base-chinese-vocab.txt", tmp_path / "s", column="text_a", holdout=0.0,
                  progress=False)
    s = ShardSet.open(out)
    tok = Tokenizer.load(s.tokenizer_path)
    assert s.meta["build"]["options"]["segmenter"] == "cjk-chars"
    pieces = [tok.backend.id_to_token(int(i)) for i in s.tokens]
    assert np.array_equal(s.word_start == 0, np.asarray([p.startswith("##") for p in pieces]))


def test_holdout_split(wiki_slice: Path, vocab: Path, tmp_path: Path) -> None:
    out = prepare(wiki_slice, vocab / "bert-base-uncased-vocab.txt", tmp_path / "s", holdout=0.2, seed=3,
                  progress=False)
    train, held = ShardSet.open(out, "train"), ShardSet.open(out, "eval")
    total = sum(1 for _ in Corpus(wiki_slice))
    assert train.num_documents + held.num_documents == total
    assert 0.1 < held.num_documents / total < 0.3
    tok = Tokenizer.load(vocab / "bert-base-uncased-vocab.txt")
    assert sorted(map(str, all_docs(out))) == sorted(map(str, expected_ids(tok, list(Corpus(wiki_slice)))))
    again = prepare(wiki_slice, vocab / "bert-base-uncased-vocab.txt", tmp_path / "t", holdout=0.2, seed=3,
                    progress=False)
    assert np.array_equal(ShardSet.open(again, "eval").tokens, held.tokens)
    with pytest.raises(ValueError, match="no split 'test'"):
        ShardSet.open(out, "test")


def test_reuse_and_rebuild(wiki_slice: Path, vocab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(wiki_slice.read_bytes())
    bert = vocab / "bert-base-uncased-vocab.txt"
    out = prepare(corpus, bert, tmp_path / "s", progress=True)
    stamp = (out / "train" / "tokens.bin").stat().st_mtime_ns
    capsys.readouterr()
    prepare(corpus, bert, tmp_path / "s", progress=True)
    assert "up to date" in capsys.readouterr().err
    assert (out / "train" / "tokens.bin").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other tokenizer"):
        prepare(corpus, vocab / "bert-base-chinese-vocab.txt", tmp_path / "s", progress=False)
    corpus.write_text("new text\n", encoding="utf-8")
    with pytest.raises(ValueError, match="other sources.*overwrite"):
        prepare(corpus, bert, tmp_path / "s", progress=False)
    prepare(corpus, bert, tmp_path / "s", overwrite=True, holdout=0.0, progress=False)
    assert ShardSet.open(out).num_tokens == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_parallel_workers_match_one_process(wiki_slice: Path, vocab: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards_module, "_CHUNK_BYTES", 20_000)  # several chunks from a small corpus
    one = prepare(wiki_slice, vocab / "bert-base-uncased-vocab.txt", tmp_path / "one", workers=1, holdout=0.1,
                  progress=False)
    two = prepare(wiki_slice, vocab / "bert-base-uncased-vocab.txt", tmp_path / "two", workers=2, holdout=0.1,
                  progress=False)
    for split in ("train", "eval"):
        a, b = ShardSet.open(one, split), ShardSet.open(two, split)
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.word_start, b.word_start)
        assert np.array_equal(a.sentence_offsets, b.sentence_offsets)
        assert np.array_equal(a.document_offsets, b.document_offsets)


def test_bad_input_leaves_nothing_behind(tmp_path: Path, vocab: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "fine"}\n' * 16 + '{"text": oops}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"corpus\.jsonl:17: invalid JSON"):
        prepare(corpus, vocab / "bert-base-uncased-vocab.txt", tmp_path / "s", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]
    out = prepare(corpus, vocab / "bert-base-uncased-vocab.txt", tmp_path / "s", errors="skip", holdout=0.0,
                  progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["read"]["skipped"] == {"invalid JSON": 1} and meta["splits"]["train"]["documents"] == 16
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"empty\.txt: empty corpus"):
        prepare(tmp_path / "empty.txt", vocab / "bert-base-uncased-vocab.txt", tmp_path / "e", progress=False)
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        ShardSet.open(tmp_path)


def test_prepare_command(tmp_path: Path, vocab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "c.tsv"
    corpus.write_text("id\tbody\n1\tFirst review. Very good!\n2\tSecond one.\n", encoding="utf-8")
    code = plmkit_main(["prepare", str(corpus), "--tokenizer", str(vocab / "bert-base-uncased-vocab.txt"),
                        "-o", str(tmp_path / "s"), "--column", "1", "--split-sentences", "--holdout", "0",
                        "--workers", "1"])
    assert code == 0
    s = ShardSet.open(tmp_path / "s")
    assert (s.num_documents, s.num_sentences) == (2, 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    code = plmkit_main(["prepare", str(bad), "--tokenizer", str(vocab / "bert-base-uncased-vocab.txt"),
                        "-o", str(tmp_path / "b")])
    assert code == 2
    assert f"{bad}:2: invalid JSON" in capsys.readouterr().err
