"""Metrics for every fine-tuning task, on the reference libraries where they exist.

scikit-learn, seqeval, sacrebleu and rouge-score come with the ``metrics`` extra (``pip install
'plmkit[metrics]'``); a missing one is a `plmkit.extras.MissingExtraError` naming it.

Scales follow the reference of each metric: classification, entity and ROUGE scores are
fractions in [0, 1] (like scikit-learn, seqeval and rouge-score); SQuAD EM/F1, BLEU and chrF
are in [0, 100] (like the official SQuAD script and sacrebleu).

- classification: `accuracy`, `macro_f1`, `classification_report` (per class P/R/F1),
  `confusion_matrix` (scikit-learn), `plot_confusion_matrix` (PNG, matplotlib's Agg canvas)
- tagging: `entity_scores` (seqeval; IOB2 or IOBES)
- extractive QA: `squad_scores` (English: the official SQuAD normalization and bag-of-token
  F1; Chinese: CMRC 2018 style, mixed segmentation and longest-common-substring F1)
- generation: `bleu`, `chrf` (sacrebleu), `rouge` (rouge-score; characters for Chinese),
  `perplexity`
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from plmkit.data.sentences import is_cjk
from plmkit.extras import require
from plmkit.files import atomic_write

Language = Literal["en", "zh"]
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCTUATION = frozenset(string.punctuation)


# ---- classification -------------------------------------------------------------------------
def _sklearn() -> Any:
    return require("sklearn.metrics", "metrics", "classification metrics (accuracy, F1, confusion matrix)")


def _label_arrays(predictions: Sequence[int] | np.ndarray, references: Sequence[int] | np.ndarray,
                  num_labels: int | None = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Predictions, references (flat int arrays) and the class ids to score: 0..num_labels-1, else
    those that occur (scikit-learn's default)."""
    pred, gold = np.asarray(predictions, dtype=np.int64).ravel(), np.asarray(references, dtype=np.int64).ravel()
    if pred.shape != gold.shape:
        raise ValueError(f"{pred.size} predictions but {gold.size} references")
    if pred.size == 0:
        raise ValueError("no predictions to score")
    if num_labels is None:
        return pred, gold, sorted(set(pred.tolist()) | set(gold.tolist()))
    if min(pred.min(), gold.min()) < 0 or max(pred.max(), gold.max()) >= num_labels:
        raise ValueError(f"label ids must lie in 0..{num_labels - 1}")
    return pred, gold, list(range(num_labels))


def accuracy(predictions: Sequence[int] | np.ndarray, references: Sequence[int] | np.ndarray) -> float:
    """Fraction of predictions equal to their reference."""
    accuracy_score = _sklearn().accuracy_score

    pred, gold, _ = _label_arrays(predictions, references)
    return float(accuracy_score(gold, pred))


def confusion_matrix(
    predictions: Sequence[int] | np.ndarray, references: Sequence[int] | np.ndarray, num_labels: int | None = None,
) -> np.ndarray:
    """Counts (C, C): row = reference class, column = predicted class (scikit-learn's layout).

    C is `num_labels`, else the largest id seen + 1."""
    sk_confusion_matrix = _sklearn().confusion_matrix

    pred, gold, _ = _label_arrays(predictions, references, num_labels)
    size = num_labels if num_labels is not None else int(max(pred.max(), gold.max())) + 1
    if min(pred.min(), gold.min()) < 0:
        raise ValueError(f"label ids must lie in 0..{size - 1}")
    return sk_confusion_matrix(gold, pred, labels=list(range(size))).astype(np.int64)


def macro_f1(
    predictions: Sequence[int] | np.ndarray, references: Sequence[int] | np.ndarray, num_labels: int | None = None,
) -> float:
    """Unweighted mean F1 over classes (0 where undefined).

    Without `num_labels`, the classes are those seen in the predictions or references
    (scikit-learn's default); with it, all of 0..num_labels-1 count (absent ones as 0).
    """
    f1_score = _sklearn().f1_score

    pred, gold, classes = _label_arrays(predictions, references, num_labels)
    return float(f1_score(gold, pred, labels=classes, average="macro", zero_division=0))


def classification_report(
    predictions: Sequence[int] | np.ndarray,
    references: Sequence[int] | np.ndarray,
    label_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, macro P/R/F1 over all `label_names` classes and P/R/F1/support per class
    (scikit-learn's `precision_recall_fscore_support`, 0 where undefined).

    Returns ``{"accuracy", "macro_precision", "macro_recall", "macro_f1", "per_class":
    {name: {"precision", "recall", "f1", "support"}}}``; names default to "0", "1", ...
    """
    precision_recall_fscore_support = _sklearn().precision_recall_fscore_support

    pred, gold, _ = _label_arrays(predictions, references, len(label_names) if label_names else None)
    size = len(label_names) if label_names else int(max(pred.max(), gold.max())) + 1
    names = list(label_names) if label_names else [str(i) for i in range(size)]
    precision, recall, f1, support = precision_recall_fscore_support(gold, pred, labels=list(range(size)),
                                                                     zero_division=0)
    return {
        "accuracy": accuracy(pred, gold),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(names, precision, recall, f1, support)},
    }


def plot_confusion_matrix(
    matrix: np.ndarray, label_names: Sequence[str], path: str | Path, *, normalize: bool = False,
    title: str | None = None,
) -> Path:
    """Draw a (C, C) confusion matrix (rows = reference) as a PNG at `path`; returns the path.

    Rows and columns are labelled with `label_names`, the colour bar with what the colours count
    (examples, or the fraction of each reference class); `title` (e.g. the run's name) heads it."""
    fig = confusion_figure(matrix, label_names, normalize=normalize, title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def confusion_figure(matrix: np.ndarray, label_names: Sequence[str], *, normalize: bool = False,
                     title: str | None = None) -> Any:
    """The matplotlib Figure `plot_confusion_matrix` saves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    if matrix.shape != (len(label_names), len(label_names)):
        raise ValueError(f"matrix shape {matrix.shape} does not match {len(label_names)} label names")
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalize else matrix
    size = max(4.0, 0.6 * len(label_names) + 2)
    fig = Figure(figsize=(size + 1.6, size + 0.4))  # drawn by the Agg canvas: no pyplot, no global backend switch
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues")
    bar = fig.colorbar(image, ax=ax, fraction=0.046)
    bar.set_label("fraction of the reference class" if normalize else "examples")
    ax.set(xticks=range(len(label_names)), yticks=range(len(label_names)), xlabel="predicted label",
           ylabel="reference label")
    ax.set_title(f"{title}\nconfusion matrix" if title else "confusion matrix", fontsize=11)
    ax.set_xticklabels(label_names, rotation=45, ha="right")
    ax.set_yticklabels(label_names)
    threshold = shown.max() / 2 if shown.size else 0
    for (row, col), value in np.ndenumerate(shown):
        ax.text(col, row, f"{value:.2f}" if normalize else str(value), ha="center", va="center",
                color="white" if value > threshold else "black")
    fig.tight_layout()
    return fig


# ---- tagging ----------------------------------------------------------------------------------
def entity_scores(
    references: Sequence[Sequence[str]],
    predictions: Sequence[Sequence[str]],
    *,
    scheme: Literal["IOB2", "IOBES"] = "IOB2",
    strict: bool = False,
) -> dict[str, Any]:
    """Entity-level micro precision/recall/F1 with seqeval, plus the same per entity type.

    ``strict=False`` is the conlleval rule (an I- after O starts an entity); ``strict=True``
    counts only entities well-formed under `scheme`. Returns ``{"precision", "recall",
    "f1", "per_type": {type: {"precision", "recall", "f1", "support"}}}``.
    """
    metrics = require("seqeval.metrics", "metrics", "entity scores (NER)")
    schemes = require("seqeval.scheme", "metrics", "entity scores (NER)")
    IOB2, IOBES = schemes.IOB2, schemes.IOBES  # noqa: N806 (seqeval's names)

    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} reference sentences but {len(predictions)} predicted")
    for i, (gold, pred) in enumerate(zip(references, predictions)):
        if len(gold) != len(pred):
            raise ValueError(f"sentence {i}: {len(gold)} reference tags but {len(pred)} predicted")
    options: dict[str, Any] = {"mode": "strict", "scheme": {"IOB2": IOB2, "IOBES": IOBES}[scheme]} if strict else {}
    gold_lists, pred_lists = [list(s) for s in references], [list(s) for s in predictions]
    report = metrics.classification_report(gold_lists, pred_lists, output_dict=True, zero_division=0, **options)
    micro = report["micro avg"]
    per_type = {name: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                       "f1": float(v["f1-score"]), "support": int(v["support"])}
                for name, v in report.items() if not name.endswith(" avg")}
    return {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"]), "per_type": per_type}


# ---- extractive QA ----------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """The official SQuAD normalization: lowercase, drop punctuation and articles, fix spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _is_punctuation(char: str) -> bool:
    return char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")


def mixed_segments(text: str) -> list[str]:
    """CMRC 2018 style segmentation: each CJK character alone, other text split into words
    on spaces; lowercased, punctuation (ASCII, CJK and other Unicode P*) removed."""
    segments: list[str] = []
    word: list[str] = []
    for char in text.lower().strip():
        if _is_punctuation(char) or is_cjk(char):
            segments.extend("".join(word).split())
            word = []
            if not _is_punctuation(char):
                segments.append(char)
        else:
            word.append(char)
    segments.extend("".join(word).split())
    return segments


def _longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common contiguous run of segments (as in the CMRC 2018 script)."""
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def _tokens(text: str, language: Language) -> list[str]:
    return normalize_answer(text).split() if language == "en" else mixed_segments(text)


def squad_exact_match(prediction: str, reference: str, language: Language = "en") -> float:
    """1.0 when the normalized texts are equal (English: SQuAD rules; Chinese: CMRC rules)."""
    if language == "en":
        return float(normalize_answer(prediction) == normalize_answer(reference))
    return float(mixed_segments(prediction) == mixed_segments(reference))


def squad_f1(prediction: str, reference: str, language: Language = "en") -> float:
    """Overlap F1 of one prediction against one reference, in [0, 1].

    English: bag-of-tokens overlap after SQuAD normalization. Chinese: CMRC 2018 rule,
    overlap = the longest common run of mixed segments. Two empty answers score 1.
    """
    pred, gold = _tokens(prediction, language), _tokens(reference, language)
    if not pred or not gold:
        return float(pred == gold)
    if language == "en":
        common = sum((Counter(pred) & Counter(gold)).values())
    else:
        common = _longest_common_run(gold, pred)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], language: Language = "en",
) -> dict[str, float]:
    """Exact match and F1 in [0, 100], each the best over a question's references, averaged
    over all reference questions (an unanswered question scores 0; an empty reference list
    means unanswerable, matched by the empty answer "").

    Returns ``{"exact_match", "f1", "count"}``.
    """
    if language not in ("en", "zh"):
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    if not references:
        raise ValueError("no reference questions to score")
    exact = f1 = 0.0
    for qid, answers in references.items():
        golds = list(answers) or [""]
        if qid not in predictions:
            continue
        exact += max(squad_exact_match(predictions[qid], g, language) for g in golds)
        f1 += max(squad_f1(predictions[qid], g, language) for g in golds)
    count = len(references)
    return {"exact_match": 100.0 * exact / count, "f1": 100.0 * f1 / count, "count": float(count)}


# ---- generation -------------------------------------------------------------------------------
def _reference_streams(references: Sequence[str | Sequence[str]], n: int) -> list[list[str | None]]:
    """Per-hypothesis reference lists -> sacrebleu's streams (None where a hypothesis has fewer)."""
    if len(references) != n:
        raise ValueError(f"{n} hypotheses but {len(references)} reference entries")
    per_item = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(not refs for refs in per_item):
        raise ValueError("every hypothesis needs at least one reference")
    width = max(len(refs) for refs in per_item)
    return [[refs[k] if k < len(refs) else None for refs in per_item] for k in range(width)]


def bleu(
    hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], *,
    language: Language = "en", tokenize: str | None = None,
) -> float:
    """Corpus BLEU (sacrebleu, 0-100). References: one string or a list of strings per
    hypothesis. `tokenize` defaults to "13a", or "zh" for Chinese."""
    sacrebleu = require("sacrebleu", "metrics", "BLEU")

    streams = _reference_streams(references, len(hypotheses))
    tokenize = tokenize or ("zh" if language == "zh" else "13a")
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams, tokenize=tokenize).score)  # type: ignore[arg-type]


def chrf(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus chrF (sacrebleu, 0-100); references as for `bleu`."""
    sacrebleu = require("sacrebleu", "metrics", "chrF")

    streams = _reference_streams(references, len(hypotheses))
    return float(sacrebleu.corpus_chrf(list(hypotheses), streams).score)  # type: ignore[arg-type]


class CharTokenizer:
    """A rouge-score tokenizer that keeps CJK text: each CJK character is a token, other text
    splits into lowercase alphanumeric words; punctuation is dropped."""

    _WORD = re.compile(r"[^\W_]+")

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for piece in self._WORD.findall(text.lower()):
            run: list[str] = []
            for char in piece:
                if is_cjk(char):
                    tokens.extend(["".join(run)] if run else [])
                    run = []
                    tokens.append(char)
                else:
                    run.append(char)
            tokens.extend(["".join(run)] if run else [])
        return tokens


def rouge(
    hypotheses: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    language: Language = "en",
    rouge_types: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
    use_stemmer: bool = False,
) -> dict[str, float]:
    """Mean ROUGE F-measures in [0, 1] (rouge-score). With several references per hypothesis
    the best-scoring one counts. Chinese is scored on characters (`CharTokenizer`);
    `use_stemmer` applies to English only."""
    rouge_scorer = require("rouge_score.rouge_scorer", "metrics", "ROUGE")

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference entries")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    tokenizer = CharTokenizer() if language == "zh" else None
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer and tokenizer is None,
                                      tokenizer=tokenizer)
    totals = dict.fromkeys(rouge_types, 0.0)
    for hypothesis, refs in zip(hypotheses, references):
        scores = scorer.score_multi([refs] if isinstance(refs, str) else list(refs), hypothesis)
        for name in rouge_types:
            totals[name] += scores[name].fmeasure
    return {name: total / len(hypotheses) for name, total in totals.items()}


def perplexity(mean_loss: float) -> float:
    """exp(mean token cross-entropy in nats); inf when that overflows."""
    if math.isnan(mean_loss):
        raise ValueError("mean loss is NaN")
    return math.exp(mean_loss) if mean_loss < 700 else math.inf
