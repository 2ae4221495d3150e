"""Downstream task data: readers for each file format and feature builders for each task.

Readers return small frozen dataclasses that remember ``file:line``; feature builders turn
them into dicts of model inputs (or dataclasses holding such a dict as ``.inputs`` plus what
post-processing needs); `collate` pads a list of those dicts into tensors.
"""

from plmkit.data.tasks.classification import TextExample, encode_classification, read_classification
from plmkit.data.tasks.features import IGNORE_INDEX, backend_of, collate, trim_span
from plmkit.data.tasks.labels import LabelMap, class_weights
from plmkit.data.tasks.ner import (
    TaggedSentence, TokenFeature, encode_ner, first_tokens, read_conll, to_bio, to_bioes, word_tags,
)
from plmkit.data.tasks.qa import (
    QAExample, QAFeature, QASpan, WindowError, answer_char_span, answer_char_spans, encode_qa, nbest_spans,
    postprocess_qa, rank_answers, read_squad,
)
from plmkit.data.io import MissingColumnError, read_table
from plmkit.errors import DataError
from plmkit.data.tasks.seq2seq import (
    Seq2SeqExample, causal_lm_prompt, causal_lm_prompts, encode_causal_lm, encode_seq2seq, read_parallel,
    read_seq2seq_jsonl, read_seq2seq_table,
)

DataFormatError = DataError
"""Errors of task files: `plmkit.errors.DataError` (the name is kept for callers)."""

__all__ = [
    "IGNORE_INDEX", "DataError", "DataFormatError", "LabelMap", "MissingColumnError", "QAExample", "QAFeature",
    "QASpan", "Seq2SeqExample",
    "TaggedSentence", "TextExample", "TokenFeature", "WindowError", "answer_char_span", "answer_char_spans",
    "backend_of", "causal_lm_prompt", "causal_lm_prompts", "class_weights", "collate", "encode_causal_lm",
    "encode_classification", "encode_ner", "encode_qa", "encode_seq2seq", "first_tokens", "nbest_spans",
    "postprocess_qa", "rank_answers", "read_classification", "read_conll", "read_parallel", "read_seq2seq_jsonl",
    "read_seq2seq_table", "read_squad", "read_table", "to_bio", "to_bioes", "trim_span", "word_tags",
]
