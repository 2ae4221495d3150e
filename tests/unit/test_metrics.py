"""Metrics against the reference libraries, direct numpy computations and hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from plmkit.metrics import (
    CharTokenizer, accuracy, bleu, chrf, classification_report, confusion_matrix, entity_scores, macro_f1,
    mixed_segments, perplexity, plot_confusion_matrix, rouge, squad_exact_match, squad_f1, squad_scores,
)


@pytest.fixture
def labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 5, size=400)
    pred = np.where(rng.random(400) < 0.6, gold, rng.integers(0, 5, size=400))
    pred[pred == 3] = 2  # class 3 is never predicted: its precision is undefined (0)
    return pred, gold


def _numpy_per_class(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> np.ndarray:
    rows = []
    for c in range(num_labels):
        tp = np.sum((pred == c) & (gold == c))
        p = tp / np.sum(pred == c) if np.sum(pred == c) else 0.0
        r = tp / np.sum(gold == c) if np.sum(gold == c) else 0.0
        rows.append((p, r, 2 * p * r / (p + r) if p + r else 0.0))
    return np.array(rows)


def test_accuracy_and_macro_f1_match_numpy(labels: tuple[np.ndarray, np.ndarray]) -> None:
    pred, gold = labels
    assert accuracy(pred, gold) == pytest.approx(np.mean(pred == gold))
    assert macro_f1(pred, gold) == pytest.approx(_numpy_per_class(pred, gold, 5)[:, 2].mean())
    # Without num_labels only classes that occur count; with it, an absent class counts as 0.
    assert macro_f1([0, 1, 1], [0, 1, 0]) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert macro_f1([0, 1, 1], [0, 1, 0], num_labels=3) == pytest.approx((2 / 3 + 2 / 3) / 3)


def test_classification_metrics_match_scikit_learn(labels: tuple[np.ndarray, np.ndarray]) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    pred, gold = labels
    assert macro_f1(pred, gold) == pytest.approx(metrics.f1_score(gold, pred, average="macro", zero_division=0))
    assert np.array_equal(confusion_matrix(pred, gold), metrics.confusion_matrix(gold, pred))
    report = classification_report(pred, gold, ["a", "b", "c", "d", "e"])
    p, r, f, s = metrics.precision_recall_fscore_support(gold, pred, labels=range(5), zero_division=0)
    for i, name in enumerate("abcde"):
        row = report["per_class"][name]
        got = (row["precision"], row["recall"], row["f1"], row["support"])
        assert got == pytest.approx((p[i], r[i], f[i], s[i]))
    assert report["per_class"]["d"]["precision"] == 0.0
    assert report["macro_f1"] == pytest.approx(f.mean())
    assert report["accuracy"] == pytest.approx(metrics.accuracy_score(gold, pred))


def test_classification_input_errors() -> None:
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match=r"label ids must lie in 0\.\.1"):
        confusion_matrix([0, 2], [0, 1], num_labels=2)


def test_confusion_matrix_png(tmp_path: Path) -> None:
    matrix = confusion_matrix([0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 0])
    assert matrix.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    for normalize in (False, True):
        path = plot_confusion_matrix(matrix, ["neg", "neu", "pos"], tmp_path / f"cm-{normalize}.png",
                                     normalize=normalize)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="does not match 2 label names"):
        plot_confusion_matrix(matrix, ["a", "b"], tmp_path / "bad.png")


def test_entity_scores_by_hand_and_against_seqeval() -> None:
    from seqeval.metrics import f1_score

    gold = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "I-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O"], ["B-ORG", "I-ORG", "O", "O"]]
    scores = entity_scores(gold, pred)
    # gold: PER, LOC, ORG(3 tokens); predicted: PER, ORG, ORG(2 tokens); only PER is right.
    assert (scores["precision"], scores["recall"], scores["f1"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert scores["f1"] == pytest.approx(f1_score(gold, pred))
    assert scores["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert scores["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_entity_scores_iobes_strict() -> None:
    gold = [["B-PER", "E-PER", "O", "S-LOC"]]
    pred = [["B-PER", "I-PER", "O", "S-LOC"]]  # the PER entity never ends: invalid in strict IOBES
    assert entity_scores(gold, pred, scheme="IOBES")["f1"] == pytest.approx(1.0)
    strict = entity_scores(gold, pred, scheme="IOBES", strict=True)
    assert (strict["precision"], strict["recall"], strict["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))
    with pytest.raises(ValueError, match="sentence 0: 4 reference tags but 3 predicted"):
        entity_scores(gold, [["O", "O", "O"]])


def test_squad_english_by_hand() -> None:
    assert squad_exact_match("The Eiffel Tower!", "eiffel  tower") == 1.0
    assert squad_f1("in 1990 Paris", "Paris, 1990") == pytest.approx(0.8)  # P = 2/3, R = 1
    assert squad_f1("a cat", "the dog") == 0.0
    assert squad_f1("the", "") == 1.0  # both empty after normalization
    scores = squad_scores({"q1": "Denver Broncos", "q2": "in 1990 Paris"},
                          {"q1": ["Broncos", "Denver Broncos"], "q2": ["nothing", "Paris, 1990"], "q3": ["x"]})
    assert scores == pytest.approx({"exact_match": 100 / 3, "f1": 100 * 1.8 / 3, "count": 3})
    assert squad_scores({"q": ""}, {"q": []}) == pytest.approx({"exact_match": 100.0, "f1": 100.0, "count": 1})


def test_squad_chinese_by_hand() -> None:
    assert mixed_segments("2008年北京奥运会, Beijing Olympics！") == \
        ["2008", "年", "北", "京", "奥", "运", "会", "beijing", "olympics"]
    assert squad_f1("北京大学", "北京", "zh") == pytest.approx(2 / 3)  # P = 2/4, R = 1
    assert squad_f1("2008年", "2008年8月", "zh") == pytest.approx(2 / 3)  # P = 1, R = 2/4
    assert squad_f1("京北", "北京", "zh") == pytest.approx(0.5)  # longest common run, not bag overlap
    assert squad_f1("京北", "北京", "en") == 0.0
    assert squad_exact_match("「北京」。", "北京", "zh") == 1.0
    scores = squad_scores({"a": "北京大学", "b": "上海"}, {"a": ["北京", "北京大学"], "b": ["南京"]}, "zh")
    assert scores == pytest.approx({"exact_match": 50.0, "f1": 50.0, "count": 2})


def test_bleu_and_chrf_match_sacrebleu() -> None:
    import sacrebleu

    hyps = ["the cat sat on the mat today", "a dog runs in the big park", "he reads books every night"]
    refs = [["the cat sat on the mat", "a cat was on the mat today"], "a dog ran in the big park",
            ["he reads a book each night"]]
    streams = [["the cat sat on the mat", "a dog ran in the big park", "he reads a book each night"],
               ["a cat was on the mat today", None, None]]
    assert bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score)
    assert chrf(hyps, refs) == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score)
    assert bleu(hyps, [r if isinstance(r, str) else r[0] for r in refs]) < bleu(hyps, refs)
    zh_hyp, zh_ref = ["他们在公园里玩耍了很久"], ["他们在公园里玩了很久"]
    assert bleu(zh_hyp, zh_ref, language="zh") == pytest.approx(
        sacrebleu.corpus_bleu(zh_hyp, [zh_ref], tokenize="zh").score)
    assert bleu(zh_hyp, zh_ref, language="zh") > bleu(zh_hyp, zh_ref)  # 13a sees one word each
    with pytest.raises(ValueError, match="3 hypotheses but 2 reference entries"):
        bleu(hyps, refs[:2])


def test_rouge_matches_rouge_score_and_counts_chinese_characters() -> None:
    from rouge_score import rouge_scorer

    hyps = ["the cat was found under the bed", "police killed the gunman"]
    refs = ["the cat was under the bed", ["the gunman was shot by police", "police kill the gunman"]]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    expected = [scorer.score(refs[0], hyps[0]), scorer.score_multi(refs[1], hyps[1])]
    scores = rouge(hyps, refs)
    for name in ("rouge1", "rouge2", "rougeL"):
        assert scores[name] == pytest.approx(np.mean([e[name].fmeasure for e in expected]))
    zh = rouge(["我爱北京"], ["我爱上海"], language="zh")
    assert zh == pytest.approx({"rouge1": 0.5, "rouge2": 1 / 3, "rougeL": 0.5})
    assert rouge(["我爱北京"], ["我爱上海"])["rouge1"] == 0.0  # the default tokenizer drops CJK
    assert CharTokenizer().tokenize("GPT-2模型很好!") == ["gpt", "2", "模", "型", "很", "好"]


def test_perplexity() -> None:
    assert perplexity(2.0) == pytest.approx(math.exp(2.0))
    assert perplexity(0.0) == 1.0
    assert perplexity(1e4) == math.inf
    with pytest.raises(ValueError, match="NaN"):
        perplexity(float("nan"))
