"""Data of the quality benchmarks: the English pretraining corpus, the downstream tasks and their
bag-of-words baselines, all from ../shared/data.

The corpus is general English (WikiText-2 valid+test, TinyShakespeare, the contexts of the SQuAD
articles the QA task trains on, SciTLDR-A sources) plus the *unlabelled training texts* of the downstream tasks (SST-2 phrases,
AG News descriptions, CoNLL-2003 sentences), as a user with unlabelled in-domain text would
pretrain. No dev or test text is ever written into it.
"""

from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VOCAB = SHARED / "vocab" / "bert-base-uncased-vocab.txt"
SQUAD_TRAIN_ARTICLES = 38
"""SQuAD v1.1 ships only its dev set: its first 38 articles are the training split of the QA task
(finetune_table.py), the last 10 its dev split, so only the first 38 reach the corpus."""


def general_documents() -> list[str]:
    """WikiText-2 articles, TinyShakespeare speeches, SQuAD paragraphs, SciTLDR abstracts."""
    docs: list[str] = []
    for split in ("valid", "test"):  # WikiText-2: articles start at " = Title = " lines
        article: list[str] = []
        for line in (SHARED / "wikitext-2" / f"{split}.txt").read_text(encoding="utf-8").split("\n"):
            line = line.strip()
            if line.startswith("= ") and not line.startswith("= = ") and article:
                docs.append("\n".join(article))
                article = []
            if line:
                article.append(line)
        docs.append("\n".join(article))
    docs += [d for d in (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").split("\n\n") if d.strip()]
    with zipfile.ZipFile(SHARED / "squad-v1.1" / "dev-v1.1.json.zip") as z:
        squad = json.loads(z.read("dev-v1.1.json"))
    docs += list(dict.fromkeys(p["context"] for a in squad["data"][:SQUAD_TRAIN_ARTICLES] for p in a["paragraphs"]))
    for line in (SHARED / "scitldr-a" / "train.jsonl").read_text(encoding="utf-8").splitlines():
        docs.append("\n".join(json.loads(line)["source"]))
    return docs


def sst2_texts() -> list[str]:
    """The SST-2 training phrases that are not part of a longer one (the ~6.9k sentences the
    67k phrases were cut from): one document each."""
    rows = _rows(SHARED / "sst2" / "train.tsv", "\t", "sentence")
    kept, seen = [], ""
    for text in sorted(set(rows), key=len, reverse=True):
        if text not in seen:
            kept.append(text)
            seen += "\n" + text
    return kept


def agnews_texts() -> list[str]:
    """The 8,000 AG News training descriptions (never the test set)."""
    return _rows(SHARED / "ag_news" / "train_subset.csv", ",", "content")


def conll_texts() -> list[str]:
    """CoNLL-2003 training documents, one sentence per line (the words, no tags)."""
    docs, doc, sentence = [], [], []
    for line in (SHARED / "conll2003" / "train.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("-DOCSTART-") or not line.strip():
            if sentence:
                doc.append(" ".join(sentence))
                sentence = []
            if line.startswith("-DOCSTART-") and doc:
                docs.append("\n".join(doc))
                doc = []
            continue
        sentence.append(line.split()[0])
    if sentence:
        doc.append(" ".join(sentence))
    if doc:
        docs.append("\n".join(doc))
    return docs


TASK_TEXTS = {"sst2": sst2_texts, "agnews": agnews_texts, "conll": conll_texts}


def write_corpus(path: Path, documents: list[str]) -> Path:
    """Documents separated by blank lines (the format `plmkit prepare` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(d.replace("\n\n", "\n").strip() for d in documents if d.strip()) + "\n",
                    encoding="utf-8")
    return path


def _rows(path: Path, delimiter: str, column: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        return [row[column].strip() for row in csv.DictReader(f, delimiter=delimiter, quoting=quoting)]


# --------------------------------------------------------------------------- downstream tasks


@dataclass(frozen=True)
class Task:
    """A downstream task: its recipe, files and settings, and its label fractions."""

    name: str
    recipe: str
    metric: str
    fields: dict[str, Any]
    fractions: tuple[float, ...]
    seeds_at_small_fractions: int = 3


def tasks() -> dict[str, Task]:
    d = SHARED
    return {
        "sst2": Task("sst2", "classification", "accuracy",
                     dict(train_file=str(d / "sst2" / "train.tsv"), dev_file=str(d / "sst2" / "dev.tsv"), max_length=64),
                     (0.01, 0.1, 1.0)),
        "agnews": Task("agnews", "classification", "accuracy",
                       dict(train_file=str(d / "ag_news" / "train_subset.csv"), dev_file=str(d / "ag_news" / "test.csv"),
                            text_column="content", label_column="label", max_length=128),
                       (0.01, 0.1)),
        "conll": Task("conll", "ner", "f1",
                      dict(train_file=str(d / "conll2003" / "train.txt"), dev_file=str(d / "conll2003" / "dev.txt")),
                      (1.0,), seeds_at_small_fractions=1),
    }


def bag_of_words_baselines(task: Task, fraction: float, seeds: list[int]) -> dict[str, float]:
    """Mean dev accuracy of TF-IDF (1-2 grams) + logistic regression (best C of 1, 10, 100) and of
    multinomial naive Bayes, trained on the same label fraction as the models (the same draw of
    examples for each seed as `plmkit finetune --set train_fraction=...`)."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import MultinomialNB

    from plmkit.recipes.tasks_base import subsample

    delimiter = "\t" if task.fields["train_file"].endswith(".tsv") else ","
    text, label = task.fields.get("text_column", "sentence"), task.fields.get("label_column", "label")
    train = _labelled(Path(task.fields["train_file"]), delimiter, text, label)
    dev = _labelled(Path(task.fields["dev_file"]), delimiter, text, label)
    scores: dict[str, list[float]] = {"tfidf_logreg": [], "naive_bayes": []}
    for seed in seeds:
        texts, labels = zip(*subsample(train, None, fraction, seed))
        dev_texts, dev_labels = zip(*dev)
        tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(texts)
        scores["tfidf_logreg"].append(max(
            LogisticRegression(C=c, max_iter=3000).fit(tfidf.transform(texts), labels)
            .score(tfidf.transform(dev_texts), dev_labels) for c in (1, 10, 100)))
        counts = CountVectorizer(ngram_range=(1, 2)).fit(texts)
        scores["naive_bayes"].append(MultinomialNB().fit(counts.transform(texts), labels)
                                     .score(counts.transform(dev_texts), dev_labels))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def _labelled(path: Path, delimiter: str, text: str, label: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        return [(row[text], row[label]) for row in csv.DictReader(f, delimiter=delimiter, quoting=quoting)]
