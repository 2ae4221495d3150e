"""Extractive question answering: SQuAD-format JSON (SQuAD v1.1/v2.0, CMRC 2018), a span head
on an encoder.

Long contexts are cut into windows sharing `doc_stride` tokens; the answer is the best of the
`n_best` start/end candidates over all windows, cut out of the context through the token
offsets (an exact substring). Dev metrics: exact match and F1 in [0, 100], with the official
SQuAD normalization for English and the CMRC 2018 rules (characters, longest common run)
for Chinese.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from plmkit.config import ConfigError
from plmkit.data.tasks import QAExample, encode_qa, read_squad
from plmkit.data.tokenizer import Tokenizer
from plmkit.errors import DataError
from plmkit.infer.batching import position_limit
from plmkit.metrics import squad_scores
from plmkit.models import PretrainedModel
from plmkit.recipes.finetune_run import FinetuneResult, run_finetune
from plmkit.recipes.model_loading import load_model, load_tokenizer
from plmkit.recipes.tasks_base import (
    EvalReport, FinetuneConfig, Recipe, parse_config, predict, subsample, task_pipeline,
)

HEAD = "question-answering"
METRICS = ("f1", "exact_match")


@dataclass
class QAConfig(FinetuneConfig):
    """Extractive QA (see the module docstring)."""

    language: Literal["en", "zh"] = "en"
    """Answer language for EM/F1: "en" (SQuAD rules) or "zh" (CMRC 2018 rules)."""
    max_length: int = 384
    """Tokens per window: question + context + special tokens."""
    doc_stride: int = 128
    """Tokens shared by neighbouring windows of a long context."""
    max_query_length: int = 64
    """Questions are cut to this many tokens."""
    n_best: int = 20
    """Start and end candidates considered per window."""
    max_answer_length: int = 30
    """Longest answer, in tokens."""
    null_threshold: float | None = None
    """SQuAD v2: answer "" when the no-answer log-probability (start and end at [CLS]) beats the
    best span's by more than this."""
    member: str | None = None
    """The JSON file inside a .zip holding several."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.doc_stride < 0 or self.max_answer_length < 1 or self.n_best < 1:
            raise ConfigError("doc_stride must be >= 0, max_answer_length and n_best >= 1")


def read_questions(cfg: QAConfig, path: str | Path, labeled: bool = True) -> list[QAExample]:
    """Questions of a SQuAD-format file (answers may be empty lists when labeled=False)."""
    examples = read_squad(path, cfg.member)
    if not examples:
        raise ValueError(f"{path}: no questions")
    if labeled:
        for example in examples:
            if not example.answers and not example.is_impossible:
                raise DataError(path, None, f"question {example.id} has no answers and is not marked "
                                            "is_impossible")
    return examples


def pipeline_options(cfg: QAConfig) -> dict[str, Any]:
    """The question-answering pipeline's options for this config."""
    return {"max_length": cfg.max_length, "doc_stride": cfg.doc_stride, "max_question_length": cfg.max_query_length,
            "max_answer_length": cfg.max_answer_length, "n_best": cfg.n_best, "null_threshold": cfg.null_threshold}


def evaluate_qa(model: PretrainedModel, tokenizer: Tokenizer, cfg: QAConfig, examples: list[QAExample]) -> EvalReport:
    """Best answer per question (the question-answering pipeline); EM/F1 when the questions have
    reference answers."""
    pipe = task_pipeline("qa", model, tokenizer, cfg, pipeline_options(cfg))
    results = predict(pipe, [{"question": e.question, "context": e.context} for e in examples],
                      [f"question {e.id}" for e in examples])
    answers = {e.id: r["answer"] for e, r in zip(examples, results)}
    rows: list[dict[str, Any]] = [{"id": e.id, "question": e.question, "answer": answers[e.id]} for e in examples]
    if not any(e.answers or e.is_impossible for e in examples):
        return EvalReport({}, rows)
    references = {e.id: [] if e.is_impossible else list(e.answers) for e in examples}
    for row in rows:
        row["references"] = references[row["id"]]
    scores = squad_scores(answers, references, cfg.language)
    return EvalReport({name: scores[name] for name in METRICS}, rows, {"count": int(scores["count"])})


def finetune_qa(cfg: QAConfig | dict[str, Any] | None = None, **fields: Any) -> FinetuneResult:
    """Fine-tune a span-extraction head on SQuAD-format data; fields as in `QAConfig`.

        finetune_qa(model="runs/bert", train_file="train-v1.1.json", dev_file="dev-v1.1.json", out="runs/squad")
    """
    cfg = parse_config(QAConfig, cfg, **fields)
    tokenizer = load_tokenizer(cfg)
    every_question = subsample(read_questions(cfg, cfg.train_file), cfg.max_train_examples)
    questions = subsample(every_question, None, cfg.train_fraction, cfg.train.seed)
    texts = [*dict.fromkeys(q.context for q in every_question), *(q.question for q in every_question)]
    model = load_model(cfg, HEAD, tokenizer, texts)
    features = encode_qa(questions, tokenizer, max_length=min(cfg.max_length, position_limit(model.config)),
                         stride=cfg.doc_stride, max_query_length=cfg.max_query_length, with_labels=True)
    dev = subsample(read_questions(cfg, cfg.dev_file), cfg.max_dev_examples) if cfg.dev_file else []

    def evaluator(m: PretrainedModel) -> EvalReport:
        return evaluate_qa(m, tokenizer, cfg, dev)

    return run_finetune("qa", cfg, model, tokenizer, [f.inputs for f in features], evaluator if dev else None,
                        METRICS, pipeline_options(cfg))


RECIPE = Recipe("qa", QAConfig, finetune_qa, read_questions, evaluate_qa, pipeline_options, text_column=None)
