"""Named-entity recognition: CoNLL-format files, a token-classification head on an encoder.

Tags in the files may be BIO (IOB2), IOB1, BIOES or BMES; the model learns `scheme` (bio or
bioes). A word is tagged by its first word piece. Dev metric: seqeval entity-level micro F1
(precision / recall too, per entity type in the final report).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from plmkit.config import ConfigError
from plmkit.data.io import text_lines
from plmkit.data.tasks import LabelMap, MissingColumnError, TaggedSentence, encode_ner, read_conll, to_bio, to_bioes
from plmkit.data.tokenizer import Tokenizer
from plmkit.infer.batching import position_limit
from plmkit.metrics import entity_scores
from plmkit.models import PretrainedModel, read_config
from plmkit.recipes.finetune_run import FinetuneResult, run_finetune
from plmkit.recipes.model_loading import load_model, load_tokenizer
from plmkit.recipes.tasks_base import (
    EvalReport, FinetuneConfig, Recipe, parse_config, predict, subsample, task_pipeline,
)

HEAD = "token-classification"
METRICS = ("f1", "precision", "recall")


@dataclass
class NERConfig(FinetuneConfig):
    """Named-entity recognition (see the module docstring)."""

    scheme: Literal["bio", "bioes"] = "bio"
    """Tagging scheme the model predicts; file tags are converted to it."""
    labels: list[str] | None = None
    """Tag names in class-id order; None = the sorted tags of the training data."""
    new_dev_labels: Literal["error", "add"] = "error"
    """A dev tag no training sentence has: "error" (names it and its file:line) or "add" (a class
    of its own, which the model never sees in training)."""
    max_length: int = 128
    """Word pieces per sentence, special tokens included (words cut off are tagged O)."""
    label_all_subtokens: bool = False
    """Train on every word piece (B-X then I-X inside a word) instead of the first only."""
    strict: bool = False
    """Score only entities well-formed under `scheme` (seqeval strict mode) instead of conlleval's rule."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length < 3:
            raise ConfigError(f"max_length must be at least 3, got {self.max_length}")


def read_sentences(cfg: NERConfig, path: str | Path, labeled: bool = True) -> list[TaggedSentence]:
    """Sentences of a CoNLL file, tags converted to cfg.scheme. With labeled=False a file of
    words alone (one per line, no tag column) is read too; its tags are empty."""
    try:
        sentences = read_conll(path, scheme=cfg.scheme)
    except MissingColumnError:  # a line without a tag column
        if labeled:
            raise
        sentences = read_words(path)
    if not sentences:
        raise ValueError(f"{path}: no sentences")
    return sentences


def read_words(path: str | Path) -> list[TaggedSentence]:
    """Untagged CoNLL: the first column of each line, a blank line between sentences."""
    sentences, words, first = [], [], 0
    for number, line in text_lines(path):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append(TaggedSentence(tuple(words), (), f"{path}:{first}"))
            words = []
            continue
        first = first if words else number
        words.append(fields[0])
    if words:
        sentences.append(TaggedSentence(tuple(words), (), f"{path}:{first}"))
    return sentences


def tag_map_for(cfg: NERConfig, train: list[TaggedSentence], dev: list[TaggedSentence]) -> LabelMap:
    """cfg.labels, else the sorted tags of the training sentences (a dev tag they lack: see
    cfg.new_dev_labels); a checkpoint that already tags the same set keeps its ids."""
    tags = LabelMap.for_training(((t, s.where) for s in train for t in s.tags),
                                 ((t, s.where) for s in dev for t in s.tags),
                                 labels=cfg.labels, new_dev_labels=cfg.new_dev_labels)
    if Path(cfg.model).is_dir() and not cfg.from_scratch:
        saved, task = read_config(cfg.model)
        if task == HEAD and saved.id2label and set(saved.id2label.values()) == set(tags.id2label):
            return LabelMap.from_config(saved.id2label)
    return tags


def pipeline_options(cfg: NERConfig) -> dict[str, Any]:
    """The token-classification pipeline's options for this config."""
    return {"max_length": cfg.max_length}


def evaluate_ner(model: PretrainedModel, tokenizer: Tokenizer, cfg: NERConfig,
                 sentences: list[TaggedSentence]) -> EvalReport:
    """One predicted tag per word (the token-classification pipeline on the given words);
    seqeval entity scores when the sentences have tags."""
    pipe = task_pipeline("ner", model, tokenizer, cfg, pipeline_options(cfg))
    results = predict(pipe, [{"words": list(s.words)} for s in sentences], [s.where for s in sentences])
    predicted = [r["tags"] for r in results]
    rows: list[dict[str, Any]] = [{"words": list(s.words), "tags": p} for s, p in zip(sentences, predicted)]
    if not all(s.tags for s in sentences):
        return EvalReport({}, rows)
    convert = to_bioes if cfg.scheme == "bioes" else to_bio
    gold = [convert(s.tags) for s in sentences]
    for row, g in zip(rows, gold):
        row["reference"] = g
    scores = entity_scores(gold, [convert(p) for p in predicted], scheme="IOBES" if cfg.scheme == "bioes" else "IOB2",
                           strict=cfg.strict)
    metrics = {name: scores[name] for name in METRICS}
    return EvalReport(metrics, rows, {"per_type": scores["per_type"]})


def finetune_ner(cfg: NERConfig | dict[str, Any] | None = None, **fields: Any) -> FinetuneResult:
    """Fine-tune a token classifier on CoNLL data; fields as in `NERConfig`.

        finetune_ner(model="runs/bert", train_file="conll2003/train.txt", dev_file="conll2003/dev.txt",
                     out="runs/ner")
    """
    cfg = parse_config(NERConfig, cfg, **fields)
    tokenizer = load_tokenizer(cfg)
    every_sentence = subsample(read_sentences(cfg, cfg.train_file), cfg.max_train_examples)
    train_sentences = subsample(every_sentence, None, cfg.train_fraction, cfg.train.seed)
    dev = subsample(read_sentences(cfg, cfg.dev_file), cfg.max_dev_examples) if cfg.dev_file else []
    tags = tag_map_for(cfg, every_sentence, dev)
    texts = (" ".join(s.words) for s in every_sentence)
    model = load_model(cfg, HEAD, tokenizer, texts, id2label=dict(enumerate(tags.id2label)),
                       problem_type="single_label")
    limit = min(cfg.max_length, position_limit(model.config))
    features = encode_ner(train_sentences, tokenizer, tags, max_length=limit,
                          label_all_subtokens=cfg.label_all_subtokens)

    def evaluator(m: PretrainedModel) -> EvalReport:
        return evaluate_ner(m, tokenizer, cfg, dev)

    return run_finetune("ner", cfg, model, tokenizer, [f.inputs for f in features], evaluator if dev else None,
                        METRICS, pipeline_options(cfg))


RECIPE = Recipe("ner", NERConfig, finetune_ner, read_sentences, evaluate_ner, pipeline_options, text_column=None,
                requires=("seqeval.metrics",))
