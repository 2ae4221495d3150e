"""Tokenizer: parity with `transformers` on real vocabularies, training, save/load, errors, CLI."""

from __future__ import annotations

import gzip
import itertools
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from plmkit.cli import main as plmkit_main
from plmkit.data.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TRICKY = [
    "Hello, World! It's a naïve café — isn't it?",
    "Ünïcödé ÀÉÎÕÜ straße İstanbul",
    "emoji 😀👍🏽 and CJK 你好，世界。日本語のテキスト 한국어",
    "combining e\u0301 a\u0308 and tabs\tand  double  spaces ",
    "control\u0000chars\u200b zero width and [MASK] inside, [CLS] too",
    "numbers 3.14 , 1,000,000 @-@ <unk> = = Heading = =",
]


# ---- data -----------------------------------------------------------------------------------
def _tsv_column(path: Path, column: str, n: int) -> list[str]:
    with path.open(encoding="utf-8") as f:
        header = next(f).rstrip("\n").split("\t")
        idx = header.index(column)
        return [line.rstrip("\n").split("\t")[idx] for line in itertools.islice(f, n)]


def _lines(path: Path, n: int, skip: int = 0) -> list[str]:
    with path.open(encoding="utf-8") as f:
        lines = (line.rstrip("\n") for line in f if line.strip())
        return list(itertools.islice(lines, skip, skip + n))


@pytest.fixture(scope="module")
def english(shared_data: Path) -> list[str]:
    return _tsv_column(shared_data / "sst2" / "train.tsv", "sentence", 200) + \
        _lines(shared_data / "wikitext-2" / "test.txt", 40) + TRICKY


@pytest.fixture(scope="module")
def chinese(shared_data: Path) -> list[str]:
    return _tsv_column(shared_data / "chnsenticorp" / "train.tsv", "text_a", 80) + TRICKY


@pytest.fixture(scope="module")
def corpus(shared_data: Path) -> list[str]:
    """A small real training slice: wikitext, Shakespeare and Chinese reviews."""
    return (_lines(shared_data / "wikitext-2" / "valid.txt", 300)
            + _lines(shared_data / "tinyshakespeare" / "input.txt", 300)
            + _tsv_column(shared_data / "chnsenticorp" / "train.tsv", "text_a", 40))


def _hf(cls_name: str, folder: Path, files: dict[str, Path], **kwargs):
    """A transformers tokenizer built from vocabulary files copied into ``folder`` (offline)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copy(src, folder / name)
    return getattr(transformers, cls_name).from_pretrained(str(folder), **kwargs)


def _assert_same(ours: Tokenizer, hf, texts: list[str], pairs: list[str] | None = None, **kw) -> None:
    """ids, type ids, offsets and attention mask of a padded batch agree with transformers."""
    got = ours(texts, pairs, return_offsets_mapping=True, **kw)
    if "max_length" in kw:
        kw.setdefault("truncation", True)  # our default; transformers' is no truncation
    want = hf(texts, pairs, return_offsets_mapping=True, return_token_type_ids=True, padding=True,
              return_tensors="pt", **kw)
    for key in ("input_ids", "token_type_ids", "attention_mask", "offset_mapping"):
        assert torch.equal(got[key], want[key]), key


# ---- parity with transformers on real vocabularies ------------------------------------------
def test_bert_uncased_matches_transformers(shared_data: Path, english: list[str], tmp_path: Path) -> None:
    vocab = shared_data / "vocab" / "bert-base-uncased-vocab.txt"
    tok = Tokenizer.load(vocab)
    hf = _hf("BertTokenizerFast", tmp_path, {"vocab.txt": vocab})
    assert (tok.kind, tok.vocab_size, len(tok), tok.lowercase) == ("wordpiece", 30522, 30522, True)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.bos_id is None and tok.eos_id is None
    _assert_same(tok, hf, english)
    firsts, seconds = english[:120], english[120:240]
    _assert_same(tok, hf, firsts, seconds, truncation="longest_first", max_length=24)
    questions = [t for t in english if len(t.split()) < 10][:60]
    _assert_same(tok, hf, questions, seconds[:60], truncation="only_second", max_length=40)
    for text in english[:50]:
        enc = tok.encode(text)
        ref = hf(text, return_special_tokens_mask=True)
        assert enc.word_ids == ref.word_ids() and enc.special_tokens_mask == ref["special_tokens_mask"]
        assert tok.decode(enc.ids) == hf.decode(ref["input_ids"], skip_special_tokens=True)


@pytest.mark.parametrize("lowercase", [None, False])
def test_bert_chinese_matches_transformers(shared_data: Path, chinese: list[str], tmp_path: Path,
                                           lowercase: bool | None) -> None:
    vocab = shared_data / "vocab" / "bert-base-chinese-vocab.txt"
    tok = Tokenizer.load(vocab, lowercase=lowercase)
    assert tok.vocab_size == 21128  # U+2028 entries are tokens, not line breaks
    assert tok.id_to_token(343) == "\u2028" and tok.token_to_id("##\u2028") == 13502
    assert tok.lowercase is (lowercase is None)  # the vocabulary is uncased
    hf = _hf("BertTokenizerFast", tmp_path, {"vocab.txt": vocab}, do_lower_case=tok.lowercase)
    _assert_same(tok, hf, chinese, max_length=128)
    assert tok.tokenize("我爱北京") == ["我", "爱", "北", "京"]


def test_gpt2_matches_transformers(shared_data: Path, english: list[str], chinese: list[str],
                                   tmp_path: Path) -> None:
    vocab, merges = shared_data / "vocab" / "gpt2-vocab.json", shared_data / "vocab" / "gpt2-merges.txt"
    tok = Tokenizer.load(vocab)  # finds gpt2-merges.txt beside it
    hf = _hf("GPT2TokenizerFast", tmp_path, {"vocab.json": vocab, "merges.txt": merges})
    hf.pad_token = hf.eos_token
    assert (tok.kind, tok.vocab_size) == ("bpe", 50257)
    assert tok.bos_id == tok.eos_id == tok.pad_id == 50256 and tok.cls_id is None
    texts = english[:120] + chinese[:20]
    _assert_same(tok, hf, texts)
    _assert_same(tok, hf, texts[:60], texts[60:120], max_length=30)
    for text in texts + TRICKY:
        assert tok.decode(tok.encode(text).ids) == text


def test_byte_level_bpe_round_trips_any_text(corpus: list[str]) -> None:
    tok = Tokenizer.train(corpus, kind="bpe", vocab_size=600)
    for text in TRICKY + ["\n\n  leading and trailing  \n", "🧑‍🤝‍🧑 ZWJ family, Ａｂｃ fullwidth", ""]:
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text
        assert tok.unk_id is None or tok.unk_id not in ids


# ---- encoding options -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert(shared_data: Path) -> Tokenizer:
    return Tokenizer.load(shared_data / "vocab" / "bert-base-uncased-vocab.txt")


def test_encoding_fields_for_a_pair(bert: Tokenizer) -> None:
    enc = bert.encode("Hello world", "Tokenization day")
    assert enc.tokens == ["[CLS]", "hello", "world", "[SEP]", "token", "##ization", "day", "[SEP]"]
    assert enc.type_ids == [0, 0, 0, 0, 1, 1, 1, 1]
    assert enc.special_tokens_mask == [1, 0, 0, 1, 0, 0, 0, 1]
    assert enc.word_ids == [None, 0, 1, None, 0, 0, 1, None]
    assert enc.sequence_ids == [None, 0, 0, None, 1, 1, 1, None]
    assert enc.offsets == [(0, 0), (0, 5), (6, 11), (0, 0), (0, 5), (5, 12), (13, 16), (0, 0)]
    assert len(enc) == 8 and enc.attention_mask == [1] * 8


def test_truncation_and_padding_options(bert: Tokenizer) -> None:
    question, context = "who wrote it?", "the book was written by a very famous author long ago " * 3
    enc = bert.encode(question, context, max_length=16, truncation="only_second")
    assert len(enc) == 16 and enc.tokens[:6] == ["[CLS]", "who", "wrote", "it", "?", "[SEP]"]
    assert len(bert.encode(context, max_length=8)) == 8
    assert len(bert.encode(context, max_length=8, truncation=False)) > 8
    with pytest.raises(ValueError, match="only_second"):
        bert.encode(context, max_length=8, truncation="only_second")
    with pytest.raises(ValueError, match="truncation"):
        bert.encode(context, max_length=8, truncation="sideways")

    batch = bert(["short", "a longer text here"], padding="max_length", max_length=10)
    assert batch["input_ids"].shape == (2, 10) and batch["attention_mask"].sum().item() == 3 + 6
    left = bert(["short", "a longer text here"], padding_side="left", return_special_tokens_mask=True)
    assert left["input_ids"][0].tolist()[:3] == [0, 0, 0] and left["attention_mask"][0, 3:].all()
    assert left["special_tokens_mask"].shape == (2, 6)
    plain = bert(["short", "a longer text here"], padding=False, return_tensors=None)
    assert [len(ids) for ids in plain["input_ids"]] == [3, 6]
    with pytest.raises(ValueError, match="padding"):
        bert(["short", "a longer text here"], padding=False)
    single = bert("one text")
    assert single["input_ids"].shape == (1, 4)


def test_stride_windows_match_transformers(bert: Tokenizer, shared_data: Path, tmp_path: Path) -> None:
    hf = _hf("BertTokenizerFast", tmp_path, {"vocab.txt": shared_data / "vocab" / "bert-base-uncased-vocab.txt"})
    question = "what is the tower?"
    context = " ".join(_lines(shared_data / "wikitext-2" / "test.txt", 3))
    enc = bert.encode(question, context, max_length=64, truncation="only_second", stride=16)
    ref = hf(question, context, max_length=64, truncation="only_second", stride=16,
             return_overflowing_tokens=True)["input_ids"]
    assert [enc.ids] + [o.ids for o in enc.overflowing] == ref
    assert len(ref) > 2


def test_split_into_words_and_helpers(bert: Tokenizer) -> None:
    enc = bert.encode(["EU", "rejects", "German", "call"], is_split_into_words=True)
    assert enc.word_ids == [None, 0, 1, 2, 3, None]
    ids = torch.tensor(enc.ids)
    assert bert.decode(ids) == "eu rejects german call"
    assert bert.decode(ids, skip_special_tokens=False) == "[CLS] eu rejects german call [SEP]"
    assert bert.decode_batch(torch.stack([ids, ids])) == ["eu rejects german call"] * 2
    assert bert.convert_ids_to_tokens(bert.convert_tokens_to_ids(enc.tokens)) == enc.tokens
    assert bert.token_to_id("[MASK]") == 103 and bert.id_to_token(103) == "[MASK]"
    assert bert.token_to_id("no-such-token") is None
    assert bert.all_special_ids == [0, 100, 101, 102, 103]
    copy = pickle.loads(pickle.dumps(bert))  # DataLoader workers receive pickled tokenizers
    assert copy.encode("a pair", "of texts", max_length=5).ids == bert.encode("a pair", "of texts", max_length=5).ids


def test_lowercase_detection(tmp_path: Path) -> None:
    cased = tmp_path / "cased.txt"
    cased.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nHello\nhello\n##World\n", encoding="utf-8")
    tok = Tokenizer.load(cased)
    assert tok.lowercase is False and tok.tokenize("Hello hello") == ["Hello", "hello"]
    assert Tokenizer.load(cased, lowercase=True).tokenize("Hello") == ["hello"]


# ---- training, save and load ----------------------------------------------------------------
@pytest.mark.parametrize("kind, style", [("wordpiece", None), ("bpe", None), ("bpe", "roberta")])
def test_train_save_load_and_transformers(corpus: list[str], tmp_path: Path, kind: str, style: str | None) -> None:
    tok = Tokenizer.train(corpus, kind=kind, vocab_size=2000, style=style)
    assert tok.vocab_size == 2000 and tok.kind == kind and tok.pad_id is not None
    if kind == "wordpiece":
        assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
        assert tok.tokenize("天安门 The") == ["天", "安", "门", "the"]  # CJK one per token, lowercased
    elif style == "roberta":
        assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
        assert tok.encode("a", "b").ids[:2] == [0, tok.token_to_id("a")]
    else:
        assert tok.bos_id == tok.eos_id == tok.pad_id == 0 and tok.tokenize("The the") == ["The", "Ġthe"]

    out = tok.save(tmp_path / "tok")
    expected = {"wordpiece": {"vocab.txt"}, "bpe": {"vocab.json", "merges.txt"}}[kind]
    assert {p.name for p in out.iterdir()} == expected | {"tokenizer.json", "tokenizer_config.json",
                                                        "special_tokens_map.json"}
    again = Tokenizer.load(out)
    assert (again.kind, again.special_tokens, again.lowercase) == (tok.kind, tok.special_tokens, tok.lowercase)
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    texts = corpus[::20] + TRICKY
    pairs = list(reversed(texts))
    assert again(texts, pairs)["input_ids"].tolist() == tok(texts, pairs)["input_ids"].tolist()
    _assert_same(tok, hf, texts, pairs, max_length=48, truncation=True)
    assert hf.pad_token_id == tok.pad_id and hf.mask_token_id == tok.mask_id
    ids = tok.encode(texts[0]).ids
    assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids)


def test_folder_loading_order_and_plain_files(shared_data: Path, corpus: list[str], tmp_path: Path) -> None:
    tok = Tokenizer.train(corpus[:600], kind="wordpiece", vocab_size=500, lowercase=False)
    out = tok.save(tmp_path / "tok")
    (out / "vocab.txt").write_text("garbage\n", encoding="utf-8")  # tokenizer.json wins
    assert Tokenizer.load(out).encode("The King").ids == tok.encode("The King").ids
    assert Tokenizer.load(out).lowercase is False
    only_vocab = tmp_path / "bert"
    only_vocab.mkdir()
    shutil.copy(shared_data / "vocab" / "bert-base-uncased-vocab.txt", only_vocab / "vocab.txt")
    assert Tokenizer.load(only_vocab).encode("hello").ids == [101, 7592, 102]
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    shutil.copy(shared_data / "vocab" / "gpt2-vocab.json", gpt2 / "vocab.json")
    shutil.copy(shared_data / "vocab" / "gpt2-merges.txt", gpt2 / "merges.txt")
    assert Tokenizer.load(gpt2).encode("Hello world").ids == [15496, 995]


def test_train_from_files(corpus: list[str], tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("\n".join(corpus[:300]) + "\n", encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(corpus[300:]) + "\n")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"words": t}) + "\n" for t in corpus[:50]))
    from_files = Tokenizer.train([tmp_path / "a.txt", tmp_path / "b.txt.gz"], kind="bpe", vocab_size=500)
    from_texts = Tokenizer.train([t.strip() for t in corpus], kind="bpe", vocab_size=500)  # files: lines stripped
    assert from_files.get_vocab() == from_texts.get_vocab()
    from_strs = Tokenizer.train([str(tmp_path / "a.txt"), str(tmp_path / "b.txt.gz")], kind="bpe", vocab_size=500)
    assert from_strs.get_vocab() == from_texts.get_vocab()
    jsonl = Tokenizer.train(tmp_path / "c.jsonl", kind="wordpiece", vocab_size=300, field_name="words")
    assert jsonl.vocab_size > 100
    with pytest.raises(ValueError, match=r"c\.jsonl:1: no text column among words"):  # not a usual name
        Tokenizer.train(tmp_path / "c.jsonl", kind="wordpiece", vocab_size=300)
    with pytest.raises(ValueError, match="no training text"):
        Tokenizer.train([], kind="wordpiece", vocab_size=300)
    with pytest.raises(ValueError, match="kind"):
        Tokenizer.train(corpus, kind="unigram", vocab_size=300)


# ---- errors ---------------------------------------------------------------------------------
def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, type[Exception], str]]:
    def write(rel: str, data: str | bytes) -> Path:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return path

    write("nomerges/vocab.json", '{"a": 0, "b": 1}')
    write("badmerge/vocab.json", '{"a": 0, "b": 1, "ab": 2}')
    write("badmerge/merges.txt", "#version: 0.2\na b\nab\n")
    write("oov/vocab.json", '{"a": 0, "b": 1}')
    write("oov/merges.txt", "a c\n")
    (tmp_path / "empty").mkdir()
    return {
        "missing": (tmp_path / "nope", FileNotFoundError, "nope"),
        "empty folder": (tmp_path / "empty", FileNotFoundError, "empty"),
        "corrupt json": (write("t/tokenizer.json", '{"model": {"type": '), ValueError, "tokenizer.json: line 1"),
        "json without vocab": (write("u/tokenizer.json", '{"model": {"type": "BPE"}}'), ValueError, "tokenizer.json"),
        "binary vocab": (write("bin.txt", b"[UNK]\n\xff\xfe\n"), ValueError, "bin.txt: line 2"),
        "no unk": (write("nounk.txt", "[PAD]\nhello\n"), ValueError, "nounk.txt"),
        "no merges": (tmp_path / "nomerges", FileNotFoundError, "merges.txt"),
        "bad merges line": (tmp_path / "badmerge", ValueError, "merges.txt: line 3"),
        "merges out of vocab": (tmp_path / "oov", ValueError, "oov/vocab.json"),
    }


@pytest.mark.parametrize("case", ["missing", "empty folder", "corrupt json", "json without vocab", "binary vocab",
                                  "no unk", "no merges", "bad merges line", "merges out of vocab"])
def test_bad_files_raise_clear_errors(tmp_path: Path, case: str) -> None:
    path, error, fragment = _bad_files(tmp_path)[case]
    with pytest.raises(error, match=fragment.replace(".", r"\.")):
        Tokenizer.load(path)


# ---- command line ---------------------------------------------------------------------------
def test_cli_train_and_encode(shared_data: Path, corpus: list[str], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(corpus[:600]) + "\n", encoding="utf-8")  # English only
    out = tmp_path / "tok"
    assert plmkit_main(["tokenizer", "train", str(text), "--kind", "wordpiece", "--vocab-size", "400",
                        "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "vocab size 400" in printed and "tokens:" in printed and (out / "tokenizer.json").is_file()
    assert plmkit_main(["tokenizer", "encode", str(out), "The king"]) == 0
    tok = Tokenizer.load(out)
    printed = capsys.readouterr().out
    assert str(tok.encode("The king").ids) in printed and "'the'" in printed
    assert plmkit_main(["tokenizer", "train", str(shared_data / "sst2" / "dev.tsv"), "--text-column", "review",
                        "--kind", "bpe", "--vocab-size", "300", "-o", str(tmp_path / "bpe")]) == 2  # no such column
    assert "dev.tsv" in capsys.readouterr().err
    assert plmkit_main(["tokenizer", "train", str(shared_data / "sst2" / "dev.tsv"),  # "sentence": found by name
                        "--kind", "bpe", "--vocab-size", "300", "-o", str(tmp_path / "bpe")]) == 0
