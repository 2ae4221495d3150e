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
from plmkit.data.tasks import (
    DataFormatError, LabelMap, TaggedSentence, encode_ner, read_conll, to_bio, to_bioes, word_tags,
)
from plmkit.data.tasks.records import text_lines
from plmkit.data.tokenizer import Tokenizer
from plmkit.metrics import entity_scores
from plmkit.models import PretrainedModel, read_config
from plmkit.recipes.tasks_base import (
    EvalReport, FinetuneConfig, FinetuneResult, Recipe, load_model, load_tokenizer, pad_id_of, parse_config,
    position_limit, run_batches, run_finetune, subsample,
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
    except DataFormatError:
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


def tag_map_for(cfg: NERConfig, sentences: list[TaggedSentence]) -> LabelMap:
    """cfg.labels, else the sorted tags of `sentences` (training + dev); a checkpoint that already tags the same set
    keeps its ids."""
    tags = LabelMap(tuple(cfg.labels)) if cfg.labels else LabelMap.from_labels(t for s in sentences for t in s.tags)
    for sentence in sentences:
        for tag in sentence.tags:
            tags.encode(tag, sentence.where)
    if Path(cfg.model).is_dir() and not cfg.from_scratch:
        saved, task = read_config(cfg.model)
        if task == HEAD and saved.id2label and set(saved.id2label.values()) == set(tags.id2label):
            return LabelMap.from_config(saved.id2label)
    return tags


def evaluate_ner(model: PretrainedModel, tokenizer: Tokenizer, cfg: NERConfig,
                 sentences: list[TaggedSentence]) -> EvalReport:
    """One predicted tag per word; seqeval entity scores when the sentences have tags."""
    tags = LabelMap.from_config(model.config.id2label or {i: f"LABEL_{i}" for i in range(model.config.num_labels)})
    features = encode_ner(sentences, tokenizer, None, max_length=min(cfg.max_length, position_limit(model)))
    token_predictions = run_batches(model, [f.inputs for f in features], cfg.eval_batch_size,
                                    pad_id_of(tokenizer, model),
                                    lambda out, batch: list(out.logits.argmax(dim=-1).cpu().numpy()))
    predicted = [word_tags(p, f.word_ids, tags, f.num_words) for p, f in zip(token_predictions, features)]
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
    tags = tag_map_for(cfg, train_sentences + dev)
    texts = (" ".join(s.words) for s in every_sentence)
    model = load_model(cfg, HEAD, tokenizer, texts, id2label=dict(enumerate(tags.id2label)),
                       problem_type="single_label")
    features = encode_ner(train_sentences, tokenizer, tags, max_length=min(cfg.max_length, position_limit(model)),
                          label_all_subtokens=cfg.label_all_subtokens)

    def evaluator(m: PretrainedModel) -> EvalReport:
        return evaluate_ner(m, tokenizer, cfg, dev)

    return run_finetune("ner", cfg, model, tokenizer, [f.inputs for f in features], evaluator if dev else None,
                        METRICS)


RECIPE = Recipe("ner", NERConfig, finetune_ner, read_sentences, evaluate_ner, (HEAD,))
