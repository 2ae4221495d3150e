"""Pretraining objectives and the batch stream, on real text: masking statistics, NSP/SOP pairs,
whole-word masking (English word pieces and Chinese words), CLM packing, span corruption,
and a resumed stream that equals the uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from plmkit.data.loader import PretrainingStream, eval_batches, open_eval, open_stream
from plmkit.data.pretraining import (
    CausalLM,
    MaskedLM,
    SentencePairMLM,
    SpanCorruption,
    build_objective,
    collate,
)
from plmkit.data.shards import ShardSet, prepare
from plmkit.data.tokenizer import Tokenizer


def first_lines(source: Path, folder: Path, count: int) -> Path:
    lines = source.read_text(encoding="utf-8").split("\n")[:count]
    path = folder / source.name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wiki(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WikiText-2 (first 1,200 lines), BERT uncased WordPiece, sentences split, 5% held out."""
    folder = tmp_path_factory.mktemp("wiki")
    corpus = first_lines(shared_data / "wikitext-2" / "valid.txt", folder, 1200)
    return prepare(corpus, shared_data / "vocab" / "bert-base-uncased-vocab.txt", folder / "shards",
                   split_sentences=True, holdout=0.05, progress=False)


@pytest.fixture(scope="module")
def chinese(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ChnSentiCorp reviews (first 300), Chinese BERT WordPiece, words from jieba when installed."""
    folder = tmp_path_factory.mktemp("zh")
    corpus = first_lines(shared_data / "chnsenticorp" / "dev.tsv", folder, 301)
    return prepare(corpus, shared_data / "vocab" / "bert-base-chinese-vocab.txt", folder / "shards",
                   column="text_a", split_sentences=True, holdout=0.0, progress=False)


@pytest.fixture(scope="module")
def shakespeare(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyShakespeare (first 3,000 lines, one document per speech), GPT-2 byte-level BPE."""
    folder = tmp_path_factory.mktemp("tiny")
    corpus = first_lines(shared_data / "tinyshakespeare" / "input.txt", folder, 3000)
    return prepare(corpus, shared_data / "vocab" / "gpt2-vocab.json", folder / "shards", holdout=0.0,
                   progress=False)


@pytest.fixture(scope="module")
def lunyu(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Analects (chinese-poetry), one document per chapter, Chinese BERT WordPiece."""
    folder = tmp_path_factory.mktemp("lunyu")
    return prepare(shared_data / "chinese-poetry" / "lunyu" / "lunyu.json",
                   shared_data / "vocab" / "bert-base-chinese-vocab.txt", folder / "shards", field="paragraphs",
                   split_sentences=True, holdout=0.0, progress=False)


def originals(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T) input ids with the masked positions restored."""
    return torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])


# ---- masked LM ----------------------------------------------------------------------------------


def test_mlm_selection_and_replacement_rates(wiki: Path) -> None:
    shards = ShardSet.open(wiki)
    objective = build_objective("bert", shards, max_length=128)
    batch = objective.batch(range(min(400, len(objective))))
    specials = torch.tensor(shards.specials.present())
    real = batch["attention_mask"] == 1
    orig = originals(batch)
    candidates = real & ~torch.isin(orig, specials)
    selected = batch["labels"] != -100
    assert not (selected & ~candidates).any()  # never [CLS], [SEP] or padding
    assert abs(selected.sum() / candidates.sum() - 0.15) < 0.005
    chosen_inputs = batch["input_ids"][selected]
    masked = (chosen_inputs == shards.specials.mask).float().mean()
    kept = (chosen_inputs == batch["labels"][selected]).float().mean()
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02 and abs(1 - masked - kept - 0.1) < 0.02
    assert not torch.isin(chosen_inputs[chosen_inputs != shards.specials.mask], specials).any()
    assert (batch["input_ids"][~selected] == orig[~selected]).all()
    assert (batch["input_ids"][~real] == shards.specials.pad).all()
    assert (batch["labels"][~real] == -100).all()


def test_whole_word_masking_keeps_word_pieces_together(wiki: Path) -> None:
    shards = ShardSet.open(wiki)
    tok = Tokenizer.load(shards.tokenizer_path)
    objective = build_objective("roberta", shards, max_length=128, whole_word=True)
    batch = objective.batch(range(300))
    selected = batch["labels"] != -100
    orig = originals(batch)
    words_with_pieces = 0
    for row, chosen in zip(orig.tolist(), selected.tolist()):
        continuing = [tok.backend.id_to_token(i).startswith("##") for i in row]
        for t in range(1, len(row)):
            if continuing[t]:
                assert chosen[t] == chosen[t - 1]  # a piece is masked exactly when the piece before it is
                words_with_pieces += chosen[t]
    assert words_with_pieces > 50
    candidates = (batch["attention_mask"] == 1) & ~torch.isin(orig, torch.tensor(shards.specials.present()))
    assert 0.13 < selected.sum() / candidates.sum() < 0.16


def test_whole_word_masking_keeps_chinese_words_together(chinese: Path) -> None:
    shards = ShardSet.open(chinese)
    objective = MaskedLM(shards, max_length=64, whole_word=True)
    multi_char_words = 0
    for i in range(len(objective)):
        start, end = objective.chunks[i]
        bounds = shards.document_token_offsets
        if ((bounds > start) & (bounds < end)).any():
            continue  # keep chunks inside one review, so positions map straight to the shards
        example = objective.example(i)
        chosen = example["labels"][1:-1] != -100  # without [CLS] ... [SEP]
        starts = shards.word_start[start:end].astype(bool)
        word = np.cumsum(starts)  # word number of each token
        for w in np.unique(word[chosen]):
            members = word == w
            assert chosen[members].all()
            multi_char_words += members.sum() > 1
    assert multi_char_words > (20 if shards.meta["build"]["options"]["segmenter"] == "jieba" else -1)


def test_masks_are_static_for_bert_and_dynamic_for_roberta(wiki: Path) -> None:
    shards = ShardSet.open(wiki)
    bert = build_objective("bert", shards, max_length=128)
    roberta = build_objective("roberta", shards, max_length=128)
    for i in (0, 7, 42):
        for key in ("input_ids", "labels", "token_type_ids"):
            assert np.array_equal(bert.example(i, 0)[key], bert.example(i, 3)[key])
        assert np.array_equal(roberta.example(i, 1)["labels"], roberta.example(i, 1)["labels"])
    changed = sum(not np.array_equal(roberta.example(i, 0)["labels"], roberta.example(i, 1)["labels"]) for i in range(20))
    assert changed >= 19
    assert not np.array_equal(roberta.example(0, 0)["labels"], build_objective("roberta", shards, 128, seed=1).example(0, 0)["labels"])


# ---- sentence pairs ------------------------------------------------------------------------------


def split_pair(row: list[int], sep: int) -> tuple[list[int], list[int]]:
    first = row.index(sep)
    second = row.index(sep, first + 1)
    return row[1:first], row[first + 1 : second]


def test_nsp_pairs_and_label_balance(wiki: Path) -> None:
    shards = ShardSet.open(wiki)
    objective = build_objective("bert", shards, max_length=128)
    assert isinstance(objective, SentencePairMLM)
    examples = [objective.example(i) for i in range(len(objective))]
    labels = np.asarray([ex["next_sentence_label"] for ex in examples])
    lengths = np.asarray([len(ex["input_ids"]) for ex in examples])
    assert abs(labels.mean() - 0.5) < 0.04
    assert abs(lengths[labels == 0].mean() - lengths[labels == 1].mean()) < 3  # length does not give the label away
    sentence_starts = shards.sentence_offsets[:-1]
    sentence_doc = np.repeat(np.arange(shards.num_documents), np.diff(shards.document_offsets))
    for i in range(150):
        batch = objective.batch([i])
        a, b = split_pair(originals(batch)[0].tolist(), shards.specials.sep)
        start, end = objective.chunks[i]
        chunk = shards.tokens[start:end].tolist()
        types = batch["token_type_ids"][0].tolist()
        assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        if batch["next_sentence_label"].item() == 0:
            assert a + b == chunk  # B is the text that follows A
        else:  # A starts the chunk; B starts at a sentence of another document
            assert a == chunk[: len(a)]
            doc_a = np.searchsorted(shards.document_token_offsets, start, "right") - 1
            sources = sentence_starts[(sentence_doc != doc_a) & (shards.tokens[sentence_starts] == b[0])]
            assert any(shards.tokens[x : x + len(b)].tolist() == b for x in sources)


def test_sop_pairs_and_label_balance(wiki: Path) -> None:
    shards = ShardSet.open(wiki)
    objective = build_objective("albert", shards, max_length=96)
    labels = []
    for i in range(len(objective)):
        batch = objective.batch([i])
        a, b = split_pair(originals(batch)[0].tolist(), shards.specials.sep)
        start, end = objective.chunks[i]
        chunk = shards.tokens[start:end].tolist()
        label = batch["next_sentence_label"].item()
        assert (a + b if label == 0 else b + a) == chunk  # label 1 = the two segments swapped
        labels.append(label)
    assert abs(np.mean(labels) - 0.5) < 0.05


def test_nsp_needs_two_documents_and_a_mask_token(shakespeare: Path, lunyu: Path) -> None:
    with pytest.raises(ValueError, match="needs a mask token"):
        build_objective("bert", ShardSet.open(shakespeare), max_length=64)
    with pytest.raises(ValueError, match="no option 'whole_words'.*valid options: mlm_probability, whole_word"):
        build_objective("bert", ShardSet.open(lunyu), max_length=64, whole_words=True)
    with pytest.raises(ValueError, match="unknown pretraining objective 'xlnet'"):
        build_objective("xlnet", ShardSet.open(lunyu), max_length=64)


# ---- packing ---------------------------------------------------------------------------------------


def test_roberta_packs_full_sentences_across_documents(wiki: Path) -> None:
    shards = ShardSet.open(wiki)
    objective = build_objective("roberta", shards, max_length=128)
    sep, bounds = shards.specials.sep, shards.document_token_offsets
    sentence_starts = set(shards.sentence_offsets.tolist())
    crossing = 0
    for i in range(len(objective)):
        start, end = (int(x) for x in objective.chunks[i])
        piece = i > 0 and objective.chunks[i - 1][1] - objective.chunks[i - 1][0] == 126
        assert start in sentence_starts or piece  # whole sentences, unless one is cut into 126-token pieces
        assert end in sentence_starts or end - start == 126
        example = objective.example(i)
        row = np.where(example["labels"] != -100, example["labels"], example["input_ids"]).tolist()
        assert len(row) <= 128 and row[0] == shards.specials.cls and row[-1] == sep
        inner = [int(b) - start for b in bounds if start < b < end]
        expected = shards.tokens[start:end].tolist()
        for k, cut in enumerate(inner):
            expected.insert(cut + k, sep)  # a separator between documents
        assert row[1:-1] == expected
        crossing += bool(inner)
    assert crossing > 10
    assert "token_type_ids" not in objective.batch([0, 1])


def test_clm_windows_are_the_document_stream(shakespeare: Path) -> None:
    shards = ShardSet.open(shakespeare)
    objective = build_objective("gpt", shards, max_length=64)
    eos = shards.specials.eos
    stream = np.concatenate([np.append(shards.document(d), eos) for d in range(shards.num_documents)])
    assert len(objective) == len(stream) // 64
    batch = objective.batch(range(len(objective)))
    assert set(batch) == {"input_ids", "labels"}  # no padding, so no attention mask
    assert batch["input_ids"].shape == (len(objective), 64)
    assert torch.equal(batch["input_ids"].flatten(), torch.from_numpy(stream[: len(objective) * 64].astype(np.int64)))
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert (batch["input_ids"] == eos).sum() == (stream[: len(objective) * 64] == eos).sum() > len(objective) // 2
    masked = CausalLM(shards, max_length=64, document_mask=True).example(3)
    ends = np.flatnonzero(masked["input_ids"] == eos)
    assert masked["segment_ids"][0] == 0 and np.all(np.diff(masked["segment_ids"]) >= 0)
    for e in ends[ends < 63]:
        assert masked["segment_ids"][e + 1] == masked["segment_ids"][e] + 1  # a new document after eos


def test_clm_with_a_wordpiece_vocabulary_separates_with_sep(lunyu: Path) -> None:
    shards = ShardSet.open(lunyu)
    objective = build_objective("gpt2", shards, max_length=128)
    ids = objective.batch(range(len(objective)))["input_ids"]
    assert (ids == shards.specials.sep).sum() >= shards.num_documents - 1
    assert not (ids == shards.specials.pad).any()


# ---- span corruption -----------------------------------------------------------------------------


def test_text_infilling_spans(lunyu: Path) -> None:
    objective = SpanCorruption(ShardSet.open(lunyu), max_length=128)
    mask = objective.mask_id
    ids = np.arange(1000, 1200, dtype=np.int64)  # distinct tokens make the alignment unique
    rng = np.random.default_rng(0)
    spans, noise = [], 0
    for _ in range(200):
        out = objective.infill(ids, rng)
        kept = out[out != mask]
        assert np.all(np.diff(kept) > 0)  # kept tokens in order
        masks = np.flatnonzero(out == mask)
        assert np.all(np.diff(masks) > 1)  # never two masks in a row
        for m in masks:
            before = out[m - 1] if m > 0 else 999
            after = out[m + 1] if m + 1 < len(out) else 1200
            spans.append(after - before - 1)
        noise += len(ids) - len(kept)
    assert min(spans) >= 1 and abs(np.mean(spans) - 3.05) < 0.25  # Poisson(3), at least 1
    assert noise == 200 * 60  # 30% of 200 tokens each time


def test_seq2seq_examples(lunyu: Path) -> None:
    shards = ShardSet.open(lunyu)
    objective = build_objective("seq2seq", shards, max_length=96)
    batch = objective.batch(range(8))
    for i in range(8):
        start, end = objective.chunks[i]
        labels = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert labels == shards.tokens[start:end].tolist() + [shards.specials.sep]  # original text + eos
        inputs = batch["input_ids"][i][batch["attention_mask"][i] == 1].tolist()
        assert inputs[-1] == shards.specials.sep and shards.specials.mask in inputs
        assert len(inputs) < len(labels) <= 96
    assert (batch["input_ids"][batch["attention_mask"] == 0] == shards.specials.pad).all()
    assert not torch.equal(objective.batch([0], epoch=1)["input_ids"], objective.batch([0], epoch=0)["input_ids"])


def test_collate_pads_each_key() -> None:
    examples = [{"input_ids": np.array([5, 6, 7]), "attention_mask": np.ones(3, np.int64), "labels": np.array([1, 2]),
                 "next_sentence_label": 1},
                {"input_ids": np.array([8]), "attention_mask": np.ones(1, np.int64), "labels": np.array([3, 4, 5]),
                 "next_sentence_label": 0}]
    batch = collate(examples, pad_id=9)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, -100], [3, 4, 5]]
    assert batch["next_sentence_label"].tolist() == [1, 0] and batch["input_ids"].dtype == torch.long


# ---- the stream -------------------------------------------------------------------------------------


def take(stream: PretrainingStream, n: int) -> list[dict[str, torch.Tensor]]:
    it = iter(stream)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resumed_stream_equals_uninterrupted(wiki: Path, prefetch: int) -> None:
    objective = build_objective("roberta", ShardSet.open(wiki), max_length=256)
    stream = PretrainingStream(objective, batch_size=16, seed=5, prefetch=prefetch)
    per_epoch = stream.batches_per_epoch
    assert 3 < per_epoch < 30
    full = take(stream, per_epoch + 4)  # runs into the second epoch
    assert stream.state_dict()["epoch"] == 1 and stream.state_dict()["position"] == 4
    first = PretrainingStream(objective, batch_size=16, seed=5, prefetch=prefetch)
    head = take(first, per_epoch - 2)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = PretrainingStream(objective, batch_size=16, seed=5, prefetch=prefetch)
    resumed.load_state_dict(state)
    assert same(head + take(resumed, 6), full)
    assert not same(full[:1], full[per_epoch : per_epoch + 1])  # a new order and new masks next epoch


def test_epochs_are_permutations_and_ranks_split_the_global_batch(wiki: Path) -> None:
    objective = build_objective("bert", ShardSet.open(wiki), max_length=128)
    single = PretrainingStream(objective, batch_size=8, seed=1, prefetch=0)
    seen = np.concatenate([single.indices(0, p) for p in range(single.batches_per_epoch)])
    assert len(np.unique(seen)) == len(seen) == single.batches_per_epoch * 8
    assert not np.array_equal(single.order(0), single.order(1))
    ranks = [PretrainingStream(objective, batch_size=4, seed=1, prefetch=0) for _ in range(2)]
    for r, stream in enumerate(ranks):
        stream.shard(r, 2)  # as the training loop does under torchrun
    assert ranks[0].batches_per_epoch == single.batches_per_epoch
    for p in (0, 3):
        assert np.array_equal(np.concatenate([r.indices(0, p) for r in ranks]), single.indices(0, p))
    both = [take(r, 2) for r in ranks]
    whole = take(single, 2)
    for step in range(2):
        assert torch.equal(torch.cat([both[0][step]["next_sentence_label"], both[1][step]["next_sentence_label"]]),
                           whole[step]["next_sentence_label"])


def test_state_must_match_the_stream(wiki: Path) -> None:
    objective = build_objective("gpt", ShardSet.open(wiki), max_length=128)
    state = PretrainingStream(objective, batch_size=8, prefetch=0).state_dict()
    with pytest.raises(ValueError, match="global_batch is 8 in the saved state but 16 here"):
        PretrainingStream(objective, batch_size=16, prefetch=0).load_state_dict(state)
    regrouped = PretrainingStream(objective, batch_size=4, rank=1, world_size=2, prefetch=0)
    regrouped.load_state_dict(state)  # same global batch on two ranks
    with pytest.raises(ValueError, match="fewer than one global batch"):
        PretrainingStream(objective, batch_size=len(objective) + 1)


def test_open_stream_and_fixed_eval_batches(wiki: Path) -> None:
    stream = open_stream(wiki, "bert", max_length=64, batch_size=4, whole_word=True, prefetch=0)
    assert next(iter(stream))["input_ids"].shape[0] == 4
    held_out = open_eval(wiki, "roberta", max_length=64)
    assert held_out.shards.split == "eval"
    one = list(eval_batches(held_out, batch_size=5))
    two = list(eval_batches(held_out, batch_size=5))
    assert same(one, two) and sum(len(b["input_ids"]) for b in one) == len(held_out)
    halves = [list(eval_batches(held_out, batch_size=5, rank=r, world_size=2)) for r in range(2)]
    assert sum(len(b["input_ids"]) for h in halves for b in h) == len(held_out)


# ---- the batches fit the models ------------------------------------------------------------------


@pytest.mark.parametrize(("objective", "arch", "family"), [
    ("bert", "encoder", "bert"), ("albert", "encoder", "albert"), ("roberta", "encoder", "roberta"),
    ("gpt", "decoder", "gpt2"), ("seq2seq", "encoder-decoder", "seq2seq"),
])
def test_batches_feed_the_pretraining_models(wiki: Path, objective: str, arch: str, family: str) -> None:
    from plmkit.config import ModelConfig
    from plmkit.models import build_model

    shards = ShardSet.open(wiki)
    config = ModelConfig(arch=arch, family=family, vocab_size=shards.vocab_size, hidden_size=32, num_layers=2,
                         num_heads=2, intermediate_size=64, max_positions=80,  # RoBERTa positions start at 2
                         decoder_start_token_id=shards.specials.cls)
    model = build_model(config, "pretraining")
    batch = build_objective(objective, shards, max_length=64).batch(range(4))
    out = model(**batch)
    targets = (batch["labels"] != -100).sum() - (len(batch["labels"]) if objective == "gpt" else 0)  # GPT shifts
    assert torch.isfinite(out.loss) and out.n_targets == targets


# ---- several corpora mixed by weight -----------------------------------------------------------------


def test_mixture_weights_are_passes_per_epoch(wiki: Path, tmp_path: Path, shared_data: Path) -> None:
    from plmkit.data.loader import open_objective
    from plmkit.data.pretraining import Mixture

    domain = prepare(first_lines(shared_data / "sst2" / "dev.tsv", tmp_path, 200),
                     shared_data / "vocab" / "bert-base-uncased-vocab.txt", tmp_path / "sst", column="sentence",
                     holdout=0.0, progress=False)
    general = build_objective("roberta", ShardSet.open(wiki), max_length=64)
    small = build_objective("roberta", ShardSet.open(domain), max_length=64)
    mix = open_objective([(wiki, 0.5), (domain, 3)], "train", "roberta", max_length=64)
    assert isinstance(mix, Mixture) and len(mix) == round(0.5 * len(general)) + 3 * len(small)
    seen = [mix.source_of(i) for i in range(len(mix))]
    from_domain = [(j, r) for s, j, r in seen if s == 1]
    assert sorted(from_domain) == [(j, r) for j in range(len(small)) for r in range(3)]  # every example, 3 times
    halves = {j for s, j, _ in seen if s == 0}
    assert len(halves) == round(0.5 * len(general))  # half of the general examples, each once
    first = [mix.source_of(i)[0] for i in range(100)]
    assert 0 < sum(first) < 100  # the first examples (an evaluation limit) sample both sources
    repeats = [i for i, (s, j, _) in enumerate(seen) if s == 1 and j == 0]
    masks = [mix.example(i)["labels"].tolist() for i in repeats]
    assert len({tuple(m) for m in masks}) > 1  # each pass draws its own mask
    assert mix.batch(range(8))["input_ids"].shape[0] == 8


def test_mixture_refuses_shards_of_another_tokenizer(wiki: Path, tmp_path: Path, shared_data: Path) -> None:
    from plmkit.data.loader import open_objective

    other = prepare(first_lines(shared_data / "sst2" / "dev.tsv", tmp_path, 100),
                    shared_data / "vocab" / "bert-base-chinese-vocab.txt", tmp_path / "zh", column="sentence",
                    holdout=0.0, progress=False)
    with pytest.raises(ValueError, match="different tokenizers"):
        open_objective([(wiki, 1), (other, 1)], "train", "roberta", max_length=64)
