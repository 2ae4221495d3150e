"""Text classification: single texts or pairs from CSV / TSV / JSON Lines, on an encoder
([CLS] pooler head) or a decoder (last-token head).

Label names are kept in the checkpoint (config.json id2label). Single-label classification
only; --class-weights weighs the loss by inverse class frequency for imbalanced data. Dev
metrics: accuracy, macro-F1 (macro precision / recall); the final report adds per-class
precision / recall / F1 and a confusion-matrix PNG.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from plmkit.config import ConfigError
from plmkit.data.tasks import (
    LabelMap, MissingColumnError, TextExample, class_weights, encode_classification, read_classification,
)
from plmkit.data.tasks.classification import find_columns
from plmkit.data.tokenizer import Tokenizer
from plmkit.infer.batching import label_names, position_limit
from plmkit.metrics import classification_report, confusion_matrix
from plmkit.models import PretrainedModel, read_config
from plmkit.recipes.finetune_run import FinetuneResult, run_finetune
from plmkit.recipes.model_loading import load_model, load_tokenizer
from plmkit.recipes.tasks_base import (
    EvalReport, FinetuneConfig, Recipe, parse_config, predict, subsample, task_pipeline,
)

HEAD = "sequence-classification"
METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall")


@dataclass
class ClassificationConfig(FinetuneConfig):
    """Text classification (see the module docstring)."""

    text_column: str | int | list[str | int] | None = None
    """Column (header name, JSON key or 0-based index) of the text; several are joined with a space;
    None = found by its name (text, sentence, content, review, ...). A .txt file is one text per line."""
    pair_column: str | int | None = None
    """Column of the second text, for pair tasks (NLI, paraphrase)."""
    label_column: str | int | None = None
    """Column of the label; None = found by its name (label, labels, class, category, sentiment, ...)."""
    format: Literal["csv", "tsv", "jsonl", "json", "txt", "parquet", "arrow"] | None = None
    """File format; None = from the file suffix (arrow: a Hugging Face datasets folder)."""
    header: bool = True
    """CSV/TSV files start with a header row."""
    column_names: list[str] | None = None
    """Names for the columns of a CSV/TSV file without a header."""
    labels: list[str] | None = None
    """Label names in class-id order (--set labels=negative,positive); None = the sorted labels of the
    training data. Labels written as ids 0, 1, ... in the data are given these names."""
    new_dev_labels: Literal["error", "add"] = "error"
    """A dev label no training example has: "error" (names it and its file:line) or "add" (a class
    of its own, which the model never sees in training)."""
    max_length: int = 128
    """Tokens per example, special tokens included (longest text cut first for pairs)."""
    class_weights: bool = False
    """Weigh the loss by inverse class frequency (n / (k * count_c)) of the training labels."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {self.max_length}")


def read_examples(cfg: ClassificationConfig, path: str | Path, labeled: bool = True) -> list[TextExample]:
    """Examples of a classification file; with labeled=False a file without the label column
    is read too (its examples have label ""). Labels written as ids get the names of cfg.labels."""
    layout: dict[str, Any] = dict(fmt=cfg.format, header=cfg.header, column_names=cfg.column_names)
    text_column, label_column = find_columns(path, cfg.text_column, cfg.label_column, labeled=labeled, **layout)
    options: dict[str, Any] = dict(text_column=text_column, pair_column=cfg.pair_column, **layout)
    try:
        examples = read_classification(path, label_column=label_column, **options)
    except MissingColumnError:
        if labeled or label_column is None:
            raise
        examples = read_classification(path, label_column=None, **options)
    if not examples:
        raise ValueError(f"{path}: no examples")
    return named_labels(examples, cfg.labels)


def named_labels(examples: list[TextExample], names: list[str] | None) -> list[TextExample]:
    """Examples whose labels are ids 0..len(names)-1 (and not themselves names) relabelled with `names`."""
    labels = {e.label for e in examples if e.label}
    if not names or not labels or labels <= set(names):
        return examples
    if not all(label.isdigit() and int(label) < len(names) for label in labels):
        return examples  # LabelMap reports the first label that is not a name, with its file:line
    return [dataclasses.replace(e, label=names[int(e.label)]) if e.label else e for e in examples]


def label_map_for(cfg: ClassificationConfig, train: list[TextExample], dev: list[TextExample]) -> LabelMap:
    """cfg.labels, else the sorted training labels (a dev label they lack: see cfg.new_dev_labels);
    a checkpoint that already classifies the same label set keeps its class ids."""
    labels = LabelMap.for_training(((e.label, e.where) for e in train), ((e.label, e.where) for e in dev),
                                   labels=cfg.labels, new_dev_labels=cfg.new_dev_labels)
    if Path(cfg.model).is_dir() and not cfg.from_scratch:
        saved, task = read_config(cfg.model)
        if task == HEAD and saved.id2label and set(saved.id2label.values()) == set(labels.id2label):
            return LabelMap.from_config(saved.id2label)
    return labels


def label_info(train: list[TextExample], dev: list[TextExample], labels: LabelMap) -> dict[str, Any]:
    """The start block's lines of a classification run: examples per label in training and dev data."""
    def counts(examples: list[TextExample]) -> str:
        seen = Counter(e.label for e in examples)
        return " | ".join(f"{name}: {seen.get(name, 0):,}" for name in labels.id2label)

    info = {"labels": f"{len(labels)} ({', '.join(labels.id2label)})", "training examples": counts(train)}
    if dev:
        info["dev examples"] = counts(dev)
    return info


def pipeline_options(cfg: ClassificationConfig) -> dict[str, Any]:
    """The text-classification pipeline's options for this config."""
    return {"max_length": cfg.max_length}


def evaluate_classification(model: PretrainedModel, tokenizer: Tokenizer, cfg: ClassificationConfig,
                            examples: list[TextExample]) -> EvalReport:
    """Predicted label and probability per example (the text-classification pipeline); accuracy,
    macro P/R/F1, per-class scores and the confusion matrix when every example has a label."""
    names = label_names(model.config)
    pipe = task_pipeline("classification", model, tokenizer, cfg, pipeline_options(cfg))
    results = predict(pipe, [e.text if e.pair is None else (e.text, e.pair) for e in examples],
                      [e.where for e in examples])
    rows = [{"text": e.text, **({"pair": e.pair} if e.pair is not None else {}), "label": r["label"],
             "score": r["score"]} for e, r in zip(examples, results)]
    if not all(e.label for e in examples):
        return EvalReport({}, rows, label_names=names)
    label_map = LabelMap(tuple(names))
    predicted = [names.index(r["label"]) for r in results]
    gold = [label_map.encode(e.label, e.where) for e in examples]
    for row, g in zip(rows, gold):
        row["reference"] = names[g]
    report = classification_report(predicted, gold, names)
    metrics = {name: report[name] for name in METRICS}
    details = {"per_class": report["per_class"], "labels": names,
               "confusion_matrix": confusion_matrix(predicted, gold, len(names)).tolist()}
    return EvalReport(metrics, rows, details, names)


def finetune_classification(cfg: ClassificationConfig | dict[str, Any] | None = None, **fields: Any) -> FinetuneResult:
    """Fine-tune a sequence classifier; fields as in `ClassificationConfig`.

        finetune_classification(model="runs/bert", train_file="sst2/train.tsv",
                                dev_file="sst2/dev.tsv", out="runs/sst2", train={"lr": 3e-5})
    """
    cfg = parse_config(ClassificationConfig, cfg, **fields)
    tokenizer = load_tokenizer(cfg)
    every_example = subsample(read_examples(cfg, cfg.train_file), cfg.max_train_examples)
    train_examples = subsample(every_example, None, cfg.train_fraction, cfg.train.seed)
    dev = subsample(read_examples(cfg, cfg.dev_file), cfg.max_dev_examples) if cfg.dev_file else []
    labels = label_map_for(cfg, every_example, dev)
    texts = (e.text if e.pair is None else f"{e.text}\n{e.pair}" for e in every_example)
    model = load_model(cfg, HEAD, tokenizer, texts, id2label=dict(enumerate(labels.id2label)),
                       problem_type="single_label")
    features = encode_classification(train_examples, tokenizer, labels,
                                     max_length=min(cfg.max_length, position_limit(model.config)))
    if cfg.class_weights:
        model.class_weights = class_weights([f["labels"] for f in features], len(labels))

    def evaluator(m: PretrainedModel) -> EvalReport:
        return evaluate_classification(m, tokenizer, cfg, dev)

    return run_finetune("classification", cfg, model, tokenizer, features, evaluator if dev else None, METRICS,
                        pipeline_options(cfg), info=label_info(train_examples, dev, labels))


RECIPE = Recipe("classification", ClassificationConfig, finetune_classification, read_examples,
                evaluate_classification, pipeline_options, requires=("sklearn.metrics",))
