"""Task readers and feature builders on slices of the real datasets in shared/data."""

from __future__ import annotations

import gzip
import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from plmkit.data.tasks import (
    IGNORE_INDEX, DataFormatError, LabelMap, QAExample, Seq2SeqExample, TaggedSentence, TextExample,
    answer_char_span, causal_lm_prompt, class_weights, collate, encode_causal_lm, encode_classification,
    encode_ner, encode_qa, encode_seq2seq, nbest_spans, postprocess_qa, read_classification, read_conll,
    read_parallel, read_seq2seq_jsonl, read_seq2seq_table, read_squad, to_bio, to_bioes, word_tags,
)
from plmkit.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def bert(shared_data: Path) -> Tokenizer:
    return Tokenizer.load(shared_data / "vocab" / "bert-base-uncased-vocab.txt")


@pytest.fixture(scope="module")
def bert_zh(shared_data: Path) -> Tokenizer:
    return Tokenizer.load(shared_data / "vocab" / "bert-base-chinese-vocab.txt")


@pytest.fixture(scope="module")
def gpt2(shared_data: Path) -> Tokenizer:
    vocab = shared_data / "vocab"
    return Tokenizer.load(vocab / "gpt2-vocab.json", merges=vocab / "gpt2-merges.txt")


@pytest.fixture(scope="module")
def squad(shared_data: Path) -> list[QAExample]:
    return read_squad(shared_data / "squad-v1.1" / "dev-v1.1.json.zip")


# ---- classification -------------------------------------------------------------------------
def test_sst2_dev_matches_readme(shared_data: Path) -> None:
    examples = read_classification(shared_data / "sst2" / "dev.tsv")
    assert len(examples) == 872
    assert Counter(e.label for e in examples) == {"0": 428, "1": 444}
    assert examples[0].text == "it 's a charming and often affecting journey ."
    assert examples[0].where.endswith("dev.tsv:2")
    assert LabelMap.from_labels(e.label for e in examples).id2label == ("0", "1")


def test_chnsenticorp_dev_has_qid_column(shared_data: Path) -> None:
    examples = read_classification(shared_data / "chnsenticorp" / "dev.tsv", "text_a")
    assert len(examples) == 1200
    assert Counter(e.label for e in examples) == {"0": 607, "1": 593}
    assert examples[0].text.startswith("這間酒店環境和服務態度亦算不錯")


def test_ag_news_test_csv(shared_data: Path) -> None:
    examples = read_classification(shared_data / "ag_news" / "test.csv", "content")
    assert len(examples) == 7600
    assert Counter(e.label for e in examples) == dict.fromkeys(["1", "2", "3", "4"], 1900)
    assert LabelMap.from_labels(e.label for e in examples).id2label == ("1", "2", "3", "4")


def test_headerless_csv_joins_columns_and_keeps_quoted_commas(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text('3,"Wall St. Bears","Short-sellers, Wall Street\'s dwindling band"\n'
                    '1,"Title two","A ""quoted""\nmultiline text"\n2,T3,D3\n', encoding="utf-8")
    examples = read_classification(path, ["title", "description"], "class", header=False,
                                   column_names=["class", "title", "description"])
    assert [e.label for e in examples] == ["3", "1", "2"]
    assert examples[0].text == "Wall St. Bears Short-sellers, Wall Street's dwindling band"
    assert examples[1].text == 'Title two A "quoted"\nmultiline text'
    assert examples[2].where.endswith("train.csv:4")  # the quoted newline spans lines 2-3


@pytest.mark.parametrize(("content", "args", "message"), [
    ("sentence\tlabel\nfine\t1\n", {"text_column": "text"},
     r"train\.tsv:1: no column 'text' in the header \(columns: sentence, label\)"),
    ("sentence\tlabel\nfine\t1\nno label here\n", {}, r"train\.tsv:3: malformed row: 1 fields but the header has 2"),
    ("sentence\tlabel\nfine\t1\n\nempty\t \n", {}, r"train\.tsv:4: empty label"),
])
def test_bad_tsv_rows_name_file_and_line(tmp_path: Path, content: str, args: dict, message: str) -> None:
    path = tmp_path / "train.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match=message):
        read_classification(path, **args)


def test_bad_jsonl_rows_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b"\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"data\.jsonl:2: invalid JSON"):
        read_classification(path, "text")
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"data\.jsonl:3: missing field 'label': fields are text"):
        read_classification(path, "text")


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes("sentence\tlabel\nfine\t1\n".encode() + b"caf\xe9\t0\n")
    with pytest.raises(DataFormatError, match=r"bad\.tsv:3: invalid UTF-8: byte 0xe9 at column 4"):
        read_classification(path)


def test_label_map_order_and_unknown_label(bert: Tokenizer) -> None:
    assert LabelMap.from_labels(["10", "2", "1", "2"]).id2label == ("1", "2", "10")
    assert LabelMap.from_labels(["pos", "neg", "neutral"]).id2label == ("neg", "neutral", "pos")
    assert LabelMap.from_config({"1": "b", "0": "a"}) == LabelMap(("a", "b"))
    dev = [TextExample("good", "1", where="dev.tsv:2"), TextExample("meh", "neutral", where="dev.tsv:3")]
    with pytest.raises(ValueError, match=r"dev\.tsv:3: label 'neutral' is not one of \['0', '1'\]"):
        encode_classification(dev, bert, LabelMap(("0", "1")))


def test_class_weights_are_inverse_frequency() -> None:
    labels = [0] * 6 + [1] * 3 + [2] * 1
    expected = np.array([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1), 0.0])
    assert torch.allclose(class_weights(labels, 4), torch.tensor(expected, dtype=torch.float32))
    assert torch.equal(class_weights([0, 1, 1, 0], 2), torch.ones(2))


def test_encode_classification_matches_tokenizer(bert: Tokenizer) -> None:
    examples = [TextExample("a gripping , funny film", "1"),
                TextExample("the premise", "0", pair="a long hypothesis " * 20)]
    features = encode_classification(examples, bert, LabelMap(("0", "1")), max_length=32)
    single = bert.encode("a gripping , funny film")
    assert features[0] == {"input_ids": single.ids, "token_type_ids": [0] * len(single.ids),
                           "attention_mask": [1] * len(single.ids), "labels": 1}
    pair = features[1]
    assert len(pair["input_ids"]) == 32 and pair["labels"] == 0
    assert pair["input_ids"][:4] == [bert.cls_id, *bert.encode("the premise", add_special_tokens=False).ids,
                                     bert.sep_id]
    assert set(pair["token_type_ids"][4:]) == {1}


def test_collate_pads_each_key_with_its_own_value() -> None:
    features = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [1, 2, 3], "y": 1},
                {"input_ids": [8], "attention_mask": [1], "labels": [4], "y": 0}]
    batch = collate(features, pad_id=9, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 9], [8, 9, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3, IGNORE_INDEX], [4] + [IGNORE_INDEX] * 3]
    assert batch["y"].tolist() == [1, 0] and batch["y"].dtype == torch.long
    with pytest.raises(ValueError, match="feature 1 has keys"):
        collate([{"input_ids": [1]}, {"input_ids": [1], "labels": [1]}], pad_id=0)


# ---- NER ------------------------------------------------------------------------------------
def test_conll2003_dev_counts(shared_data: Path) -> None:
    sentences = read_conll(shared_data / "conll2003" / "dev.txt")
    assert len(sentences) == 3250
    assert sum(len(s.words) for s in sentences) == 51362
    assert sum(t.startswith("B-") for s in sentences for t in s.tags) == 5942
    assert sentences[0].words[:2] == ("CRICKET", "-") and sentences[0].where.endswith("dev.txt:1")


def test_weibo_bmes_reads_as_bioes(shared_data: Path) -> None:
    raw = read_conll(shared_data / "weibo-ner" / "dev.all.bmes")
    bio = read_conll(shared_data / "weibo-ner" / "dev.all.bmes", scheme="bio")
    bioes = read_conll(shared_data / "weibo-ner" / "dev.all.bmes", scheme="bioes")
    assert len(raw) == 270 and all(len(s.words) == len(s.tags) for s in raw)
    assert {t[0] for s in raw for t in s.tags} == {"O", "B", "I", "E", "S"}  # M- read as I-
    assert {t[0] for s in bio for t in s.tags} == {"O", "B", "I"}
    assert [to_bio(s.tags) for s in bioes] == [list(s.tags) for s in bio]


def test_conll_docstart_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "ner.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n")
    sentences = read_conll(path)
    assert sentences == [TaggedSentence(("EU", "rejects"), ("B-ORG", "O")), TaggedSentence(("Peter",), ("B-PER",))]
    assert sentences[1].where.endswith("ner.txt:7")
    path.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(DataFormatError, match=r"ner\.txt:2: expected 'token \.\.\. tag'"):
        read_conll(path)
    path.write_text("EU B-ORG\nrejects X-MISC\n")
    with pytest.raises(DataFormatError, match=r"ner\.txt:2: tag 'X-MISC'"):
        read_conll(path)


def test_scheme_conversions() -> None:
    assert to_bioes(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "I-LOC"]) == \
        ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "I-LOC", "E-LOC"]
    assert to_bio(["I-PER", "I-PER", "B-PER", "O", "I-ORG"]) == ["B-PER", "I-PER", "B-PER", "O", "B-ORG"]  # IOB1
    assert to_bio(["B-X", "M-X", "E-X", "S-Y", "E-Y", "I-X"]) == ["B-X", "I-X", "I-X", "B-Y", "B-Y", "B-X"]
    assert to_bio(["B-PER", "I-LOC"]) == ["B-PER", "B-LOC"]


def test_bioes_round_trip_keeps_conll_entities(shared_data: Path) -> None:
    from seqeval.metrics.sequence_labeling import get_entities

    sentences = read_conll(shared_data / "conll2003" / "dev.txt")[:400]
    for s in sentences:
        bioes = to_bioes(s.tags)
        assert to_bio(bioes) == list(s.tags)
        assert get_entities(bioes) == get_entities(list(s.tags))


def test_first_subtoken_alignment_and_reverse_mapping(bert: Tokenizer) -> None:
    sentence = TaggedSentence(("Anna", "Kournikova", "lives", "in", "Johanson", "City"),
                              ("B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"))
    labels = LabelMap(("B-LOC", "B-PER", "I-LOC", "I-PER", "O"))
    [feature] = encode_ner([sentence], bert, labels)
    tokens = bert.backend.encode(list(sentence.words), is_pretokenized=True).tokens
    assert tokens == ["[CLS]", "anna", "ko", "##urn", "##iko", "##va", "lives", "in", "johan", "##son", "city", "[SEP]"]
    ids = labels.label2id
    ignore = IGNORE_INDEX
    assert feature.inputs["labels"] == [ignore, ids["B-PER"], ids["I-PER"], ignore, ignore, ignore,
                                        ids["O"], ids["O"], ids["B-LOC"], ignore, ids["I-LOC"], ignore]
    predictions = [0 if label == ignore else label for label in feature.inputs["labels"]]
    assert word_tags(predictions, feature.word_ids, labels, feature.num_words) == list(sentence.tags)

    [all_pieces] = encode_ner([sentence], bert, labels, label_all_subtokens=True)
    assert [labels.decode(i) if i != ignore else None for i in all_pieces.inputs["labels"]] == \
        [None, "B-PER", "I-PER", "I-PER", "I-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "I-LOC", None]
    bioes = LabelMap.from_labels(["O", "S-LOC", "B-LOC", "E-LOC", "I-LOC"])
    [pieces] = encode_ner([TaggedSentence(("in", "Johanson"), ("O", "S-LOC"))], bert, bioes, label_all_subtokens=True)
    assert [bioes.decode(i) for i in pieces.inputs["labels"][1:-1]] == ["O", "B-LOC", "E-LOC"]


def test_alignment_on_real_sentences_and_truncation(shared_data: Path, bert: Tokenizer) -> None:
    sentences = read_conll(shared_data / "conll2003" / "dev.txt")[:300]
    labels = LabelMap.from_labels(t for s in sentences for t in s.tags)
    for sentence, feature in zip(sentences, encode_ner(sentences, bert, labels, max_length=512)):
        kept = [labels.decode(i) for i in feature.inputs["labels"] if i != IGNORE_INDEX]
        assert kept == list(sentence.tags)
        assert word_tags(feature.inputs["labels"], feature.word_ids, labels, feature.num_words) == list(sentence.tags)
    long = max(sentences, key=lambda s: len(s.words))
    [short] = encode_ner([long], bert, labels, max_length=16)
    predicted = word_tags(short.inputs["labels"], short.word_ids, labels, short.num_words)
    covered = max(w for w in short.word_ids if w is not None)
    assert len(short.inputs["input_ids"]) == 16 and len(predicted) == len(long.words)
    assert predicted[covered + 1:] == ["O"] * (len(long.words) - covered - 1)


# ---- extractive QA --------------------------------------------------------------------------
def test_read_squad_zip_and_cmrc(shared_data: Path, squad: list[QAExample]) -> None:
    assert len(squad) == 10570
    assert len({e.title for e in squad}) == 48 and len({e.context for e in squad}) == 2067
    first = squad[0]
    assert first.question == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first.answers[0] == "Denver Broncos" and first.context[first.answer_starts[0]:].startswith("Denver Broncos")
    assert len(read_squad(shared_data / "cmrc2018" / "cmrc2018_dev.json")) == 3219
    trial = read_squad(shared_data / "cmrc2018" / "cmrc2018_trial.json")
    assert len(trial) == 1002
    off_by_one = next(e for e in trial if e.id == "TRIAL_210_QUERY_0")
    start, end = answer_char_span(off_by_one)  # type: ignore[misc]
    assert off_by_one.context[start:end] == "俗名龙尖" and start == off_by_one.answer_starts[0] - 1


def test_read_squad_errors(tmp_path: Path) -> None:
    document = {"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "q7", "answers": []}]}]}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"bad\.json: question q7: missing field 'question'"):
        read_squad(path)
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.json", "{}")
        z.writestr("b.json", "{}")
    with pytest.raises(ValueError, match=r"expected one \.json member"):
        read_squad(archive)


def _recovered(example: QAExample, feature) -> str:
    start, end = feature.inputs["start_positions"], feature.inputs["end_positions"]
    return example.context[feature.offsets[start][0]: feature.offsets[end][1]].strip()


@pytest.mark.parametrize(("max_length", "stride"), [(384, 128), (96, 32)])
def test_qa_labels_recover_the_gold_text(squad: list[QAExample], bert: Tokenizer, max_length: int, stride: int) -> None:
    examples = squad[:300]
    features = encode_qa(examples, bert, max_length=max_length, stride=stride)
    found: dict[int, list[str]] = {}
    for feature in features:
        assert len(feature.inputs["input_ids"]) <= max_length
        if feature.inputs["start_positions"] != 0:
            found.setdefault(feature.example_index, []).append(_recovered(examples[feature.example_index], feature))
    assert sorted(found) == list(range(len(examples)))  # every answer fits in some window
    inexact = [(texts, examples[i].answers) for i, texts in found.items() if not set(texts) <= set(examples[i].answers)]
    # The only misses are gold answers that end inside a word piece ("four" in "fourth").
    assert len(inexact) <= 1
    assert all(any(a in t for a in answers) for texts, answers in inexact for t in texts)
    if max_length == 96:
        assert len(features) > 2 * len(examples)


def test_qa_windows_overlap_by_stride(squad: list[QAExample], bert: Tokenizer) -> None:
    example = max(squad[:300], key=lambda e: len(e.context))
    features = encode_qa([example], bert, max_length=64, stride=16)
    assert len(features) >= 4
    spans = [[o for o in f.offsets if o is not None] for f in features]
    for left, right in zip(spans, spans[1:]):
        assert left[-16:] == right[:16]
    assert spans[0][0][0] == 0 and spans[-1][-1][1] >= len(example.context.rstrip()) - 1
    answer_end = answer_char_span(example)[1]  # type: ignore[index]
    for feature, offsets in zip(features, spans):
        holds = offsets[0][0] <= answer_char_span(example)[0] and offsets[-1][1] >= answer_end  # type: ignore[index]
        assert (feature.inputs["start_positions"] != 0) == holds
        if not holds:
            assert feature.inputs["end_positions"] == 0


def test_qa_chinese_offsets(shared_data: Path, bert_zh: Tokenizer) -> None:
    examples = read_squad(shared_data / "cmrc2018" / "cmrc2018_dev.json")[:150]
    features = encode_qa(examples, bert_zh, max_length=256, stride=64)
    found: dict[int, set[str]] = {}
    for feature in features:
        if feature.inputs["start_positions"]:
            found.setdefault(feature.example_index, set()).add(_recovered(examples[feature.example_index], feature))
    assert len(found) == len(examples)
    assert all(texts <= {a.strip() for a in examples[i].answers} for i, texts in found.items())


def _oracle_logits(features) -> tuple[list[np.ndarray], list[np.ndarray]]:
    starts, ends = [], []
    for f in features:
        s, e = np.zeros(len(f.inputs["input_ids"])), np.zeros(len(f.inputs["input_ids"]))
        s[f.inputs["start_positions"]] = e[f.inputs["end_positions"]] = 8.0
        starts.append(s)
        ends.append(e)
    return starts, ends


def test_postprocess_recovers_answers_from_oracle_logits(squad: list[QAExample], gpt2: Tokenizer) -> None:
    examples = squad[300:500]
    features = encode_qa(examples, gpt2, max_length=128, stride=32)
    predictions = postprocess_qa(examples, features, *_oracle_logits(features), n_best=5)
    assert set(predictions) == {e.id for e in examples}
    assert all(predictions[e.id] in e.answers for e in examples)
    padded = torch.zeros(len(features), 128)  # (F, T) tensors padded past each window work too
    starts, ends = _oracle_logits(features)
    padded_end = padded.clone()
    for i, (s, e) in enumerate(zip(starts, ends)):
        padded[i, : len(s)], padded_end[i, : len(e)] = torch.tensor(s), torch.tensor(e)
    assert postprocess_qa(examples, features, padded, padded_end) == predictions


def test_nbest_respects_order_and_max_length(bert: Tokenizer) -> None:
    example = QAExample("q", "Who won?", "The Denver Broncos won the game in 2016 .", ("Denver Broncos",), (4,))
    [feature] = encode_qa([example], bert, max_length=64, stride=16)
    tokens = bert.backend.encode(example.question, example.context).tokens
    assert tokens == ["[CLS]", "who", "won", "?", "[SEP]", "the", "denver", "broncos", "won", "the", "game",
                      "in", "2016", ".", "[SEP]"]
    start, end = np.zeros(len(tokens)), np.zeros(len(tokens))
    start[2], end[1] = 20.0, 20.0  # question tokens never answer
    start[8], end[0] = 9.0, 9.0  # nor does [CLS]
    start[6], end[7] = 5.0, 4.0
    start[12], end[13] = 3.0, 3.5
    end[5] = 6.0  # before every likely start
    spans = nbest_spans(feature, example.context, start, end, n_best=3, max_answer_length=30)
    assert [(s.text, s.score) for s in spans] == [
        ("won the game in 2016 .", 12.5), ("Denver Broncos", 9.0), ("Denver Broncos won the game in 2016 .", 8.5)]
    short = nbest_spans(feature, example.context, start, end, n_best=3, max_answer_length=2)
    assert [(s.text, s.score) for s in short] == [("Denver Broncos", 9.0), ("2016 .", 6.5)]
    assert (short[0].start, short[0].end) == (4, 18)


def test_postprocess_null_answer(bert: Tokenizer) -> None:
    example = QAExample("q", "Who?", "Nobody knows .", (), (), is_impossible=True)
    [feature] = encode_qa([example], bert, max_length=32, stride=8)
    assert (feature.inputs["start_positions"], feature.inputs["end_positions"]) == (0, 0)
    start, end = np.zeros(len(feature.offsets)), np.zeros(len(feature.offsets))
    start[0] = end[0] = 5.0
    start[4] = end[5] = 4.0
    assert postprocess_qa([example], [feature], [start], [end]) == {"q": "Nobody knows"}
    assert postprocess_qa([example], [feature], [start], [end], null_threshold=0.0) == {"q": ""}
    assert postprocess_qa([example], [feature], [start], [end], null_threshold=3.0) == {"q": "Nobody knows"}


def test_unlocatable_answer_is_an_error(bert: Tokenizer) -> None:
    example = QAExample("x1", "Who?", "Nobody knows .", ("Somebody",), (0,))
    with pytest.raises(ValueError, match="question x1: none of its answers"):
        encode_qa([example], bert)
    assert len(encode_qa([example], bert, with_labels=False)) == 1
    with pytest.raises(ValueError, match=r"doc_stride \(16\) must be below the 14 context tokens .* \(2 tokens\)"):
        encode_qa([example], bert, max_length=19, stride=16)


# ---- seq2seq --------------------------------------------------------------------------------
def test_seq2seq_readers_match_readmes(shared_data: Path) -> None:
    scitldr = read_seq2seq_jsonl(shared_data / "scitldr-a" / "dev.jsonl", "source", "target")
    assert len(scitldr) == 619 and sum(len(e.references) for e in scitldr) == 1453
    assert scitldr[0].source.startswith("Mixed precision training (MPT) is becoming")
    dialog = read_seq2seq_jsonl(shared_data / "dialogsum" / "dialogsum.test.jsonl", "dialogue",
                                ["summary1", "summary2", "summary3"])
    assert len(dialog) == 500 and {len(e.references) for e in dialog} == {3}
    csl = read_seq2seq_table(shared_data / "csl-ts" / "dev.tsv", 1, 2)
    assert len(csl) == 1000 and csl[0].source.startswith("采用修正的Rodrigues参数")
    multi30k = read_parallel(shared_data / "multi30k" / "train.en.gz", shared_data / "multi30k" / "train.de.gz")
    assert len(multi30k) == 29000
    assert multi30k[0] == Seq2SeqExample("Two young, White males are outside near many bushes.",
                                         ("Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",))


def test_seq2seq_reader_errors(tmp_path: Path) -> None:
    source, target = tmp_path / "a.en.gz", tmp_path / "a.de"
    with gzip.open(source, "wt", encoding="utf-8") as f:
        f.write("one\ntwo\n")
    target.write_text("eins\n")
    with pytest.raises(DataFormatError, match=r"a\.en\.gz: 2 lines, but .*a\.de has 1"):
        read_parallel(source, target)
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text('{"src": "x", "tgt": "y"}\n{"src": "x", "tgt": 3}\n')
    with pytest.raises(DataFormatError, match=r"s\.jsonl:2: field 'tgt' must be text"):
        read_seq2seq_jsonl(jsonl, "src", "tgt")


def test_encode_seq2seq(bert: Tokenizer) -> None:
    examples = [Seq2SeqExample("a long source text " * 40, ("the short summary of it",))]
    [feature] = encode_seq2seq(examples, bert, max_source_length=32, max_target_length=4)
    assert feature["input_ids"] == bert.encode(examples[0].source, max_length=32).ids
    assert feature["labels"] == bert.encode("the short summary", add_special_tokens=False).ids + [bert.sep_id]
    [full] = encode_seq2seq(examples, bert, eos_id=7)
    assert full["labels"] == bert.encode(examples[0].target, add_special_tokens=False).ids + [7]


def test_encode_causal_lm_masks_the_prompt(gpt2: Tokenizer) -> None:
    examples = [Seq2SeqExample("The cat sat on the mat. " * 30, ("A cat sat.",)),
                Seq2SeqExample("Short text.", ("Short.",))]
    features = encode_causal_lm(examples, gpt2, max_length=64, max_target_length=16, separator="\nTL;DR:")
    for example, feature in zip(examples, features):
        prompt = causal_lm_prompt(gpt2, example.source, max_length=64, max_target_length=16, separator="\nTL;DR:")
        ids, labels = feature["input_ids"], feature["labels"]
        assert ids[: len(prompt)] == prompt and gpt2.decode(prompt).endswith("\nTL;DR:")
        assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert labels[len(prompt):] == ids[len(prompt):] and ids[-1] == gpt2.eos_id
        assert gpt2.decode(ids[len(prompt):]) == example.target
        assert len(ids) <= 64 and feature["attention_mask"] == [1] * len(ids)
    # The long source is cut to fill exactly what the 16-token target budget leaves.
    assert len(features[0]["input_ids"]) == 64 - 16 + len(gpt2.encode("A cat sat.").ids) + 1
    batch = collate(features, pad_id=gpt2.pad_id)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][1, len(features[1]["labels"]):] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="leaves no room for the source"):
        encode_causal_lm(examples, gpt2, max_length=16, max_target_length=16)
