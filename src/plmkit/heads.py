"""The task vocabularies in one table: model heads, Hugging Face class suffixes, pipeline tasks,
fine-tuning recipes and pretraining objectives, and how each relates to the others.

A model has a *head* (``model.task``: "sequence-classification", ...), which names its class
(`plmkit.models.registry`) and, for Hugging Face, the suffix of its architecture
("BertForSequenceClassification"). A *pipeline task* ("text-classification", ...) serves a head
(`plmkit.pipeline`, `plmkit serve`); a fine-tuning *recipe* ("classification", ...) trains one
(`plmkit finetune`), and names the pipeline task its runs are served with. A model *family*
pretrains with its *objective* (`plmkit pretrain`).

========================  ===========================  =========================  ========================
head                      Hugging Face class suffix    pipeline task              recipes that train it
========================  ===========================  =========================  ========================
pretraining               ForPreTraining               fill-mask (encoder),       (pretrain)
                                                       text-generation (decoder),
                                                       summarization (seq2seq)
masked-lm                 ForMaskedLM                  fill-mask
sequence-classification   ForSequenceClassification    text-classification        classification
token-classification      ForTokenClassification       token-classification       ner
question-answering        ForQuestionAnswering         question-answering         qa
feature-extraction        Model                        feature-extraction
causal-lm                 LMHeadModel                  text-generation            lm, summarization,
                                                                                  translation
seq2seq-lm                (none: plmkit's own)         summarization              summarization,
                                                                                  translation
========================  ===========================  =========================  ========================

Everything else derives from `HEADS`, `RECIPE_PIPELINES` and `FAMILY_OBJECTIVES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Head:
    """One model head and what the other vocabularies call it."""

    name: str
    """The head, as ``model.task`` and config.json's plmkit section name it."""
    hf_suffix: str | None
    """Suffix of the Hugging Face architecture (after the family's stem); None: no HF equivalent."""
    pipeline: str | Mapping[str, str]
    """The pipeline task that serves it, or one per model shape (arch)."""
    recipes: tuple[str, ...] = field(default=())
    """Fine-tuning recipes that train this head; the first is the one a bare checkpoint is evaluated with."""


HEADS: dict[str, Head] = {h.name: h for h in (
    Head("pretraining", "ForPreTraining",
         {"encoder": "fill-mask", "decoder": "text-generation", "encoder-decoder": "summarization"}),
    Head("masked-lm", "ForMaskedLM", "fill-mask"),
    Head("sequence-classification", "ForSequenceClassification", "text-classification", ("classification",)),
    Head("token-classification", "ForTokenClassification", "token-classification", ("ner",)),
    Head("question-answering", "ForQuestionAnswering", "question-answering", ("qa",)),
    Head("feature-extraction", "Model", "feature-extraction"),
    Head("causal-lm", "LMHeadModel", "text-generation", ("lm", "summarization", "translation")),
    Head("seq2seq-lm", None, "summarization", ("summarization", "translation")),
)}

RECIPE_PIPELINES: dict[str, str] = {
    "classification": "text-classification",
    "ner": "token-classification",
    "qa": "question-answering",
    "summarization": "summarization",
    "translation": "translation",
    "lm": "text-generation",
}
"""The pipeline task a fine-tuning recipe's runs are served and evaluated with."""

FAMILY_OBJECTIVES: dict[str, str] = {
    "bert": "bert", "albert": "albert", "roberta": "roberta", "electra": "electra", "gpt2": "gpt", "seq2seq": "seq2seq",
}
"""The pretraining objective of each model family (`plmkit.data.pretraining.OBJECTIVES`):
MLM + next-sentence (bert), MLM + sentence order (albert), MLM (roberta), replaced-token
detection (electra), next token (gpt), span corruption (seq2seq)."""

PIPELINE_TASKS: tuple[str, ...] = tuple(dict.fromkeys(
    [t for h in HEADS.values() for t in ([h.pipeline] if isinstance(h.pipeline, str) else h.pipeline.values())]
    + list(RECIPE_PIPELINES.values())))
"""Every pipeline task."""


def pipeline_task(*, head: str | None = None, arch: str | None = None, recipe: str | None = None) -> str:
    """The pipeline task of a recipe, or of a head (on a model of shape `arch`)."""
    if recipe is not None:
        if recipe not in RECIPE_PIPELINES:
            raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPE_PIPELINES)}")
        return RECIPE_PIPELINES[recipe]
    if head not in HEADS:
        raise ValueError(f"unknown model head {head!r}; choose from {', '.join(HEADS)}")
    task = HEADS[head].pipeline
    if isinstance(task, str):
        return task
    if arch not in task:
        raise ValueError(f"a {head} head on a {arch!r} model has no pipeline task")
    return task[arch]


def recipe_heads(recipe: str) -> tuple[str, ...]:
    """The heads a recipe trains."""
    return tuple(h.name for h in HEADS.values() if recipe in h.recipes)


def default_recipe(head: str) -> str | None:
    """The recipe that evaluates a checkpoint of this head without a finetune.json, if any."""
    recipes = HEADS[head].recipes if head in HEADS else ()
    return recipes[0] if recipes else None


def hf_class_suffixes() -> dict[str, str]:
    """Head -> Hugging Face architecture suffix, for the heads Hugging Face has."""
    return {h.name: h.hf_suffix for h in HEADS.values() if h.hf_suffix is not None}


__all__ = [
    "FAMILY_OBJECTIVES", "HEADS", "Head", "PIPELINE_TASKS", "RECIPE_PIPELINES", "default_recipe",
    "hf_class_suffixes", "pipeline_task", "recipe_heads",
]
