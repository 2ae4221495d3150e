"""Extractive question answering: SQuAD-format data, windows over long contexts, span decoding.

A context longer than fits beside the question is cut into overlapping windows (``stride``
tokens shared by neighbours, as in the `tokenizers` library). In training, a window that
holds the whole answer points its start/end positions at the answer's first/last token,
any other window at index 0 (the [CLS] token). At prediction time, `postprocess_qa` picks
the best span over all windows of an example and cuts it out of the context through the
token offsets, so the answer is an exact substring of the context.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plmkit.data.io import parse_json
from plmkit.data.tasks.features import TokenizerLike, backend_of, trim_span, truncating_backend
from plmkit.errors import DataError, UserError


@dataclass(frozen=True)
class QAExample:
    """One question on one context; `answers[i]` starts at character `answer_starts[i]`."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()
    is_impossible: bool = False
    title: str = ""


def read_squad(path: str | Path, member: str | None = None) -> list[QAExample]:
    """Read SQuAD v1.1/v2.0-format JSON (CMRC 2018 too), plain or inside a ``.zip``.

    For a zip, `member` names the JSON inside it (needed only when it holds several). Invalid
    UTF-8 or JSON, a missing field or a field of the wrong type is a DataError naming the file
    and the question (or its position, e.g. ``data[0].paragraphs[3]``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                raw = archive.read(_zip_member(path, archive, member))
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(path, None, f"corrupt zip file: {e}") from None
    else:
        raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(path, line, f"invalid UTF-8: byte 0x{raw[e.start]:02x}; re-encode the file as UTF-8") from None
    document = parse_json(path, None, text)
    articles = _typed(path, _field(path, document, "data", "the file"), list, "data")
    return [example for article_index, article in enumerate(articles)
            for example in _article_examples(path, article, article_index)]


def _zip_member(path: Path, archive: zipfile.ZipFile, member: str | None) -> str:
    names = [n for n in archive.namelist() if n.endswith(".json")]
    if member is not None:
        if member not in archive.namelist():
            raise DataError(path, None, f"no member {member!r}; members are {archive.namelist()}")
        return member
    if len(names) != 1:
        raise DataError(path, None, f"expected one .json member, found {names}; pass member=")
    return names[0]


def _field(path: Path, record: Any, key: str, where: str) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise DataError(path, None, f"{where}: missing field {key!r}")
    return record[key]


def _typed(path: Path, value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        names = {list: "a list", str: "text", int: "an integer", dict: "an object"}
        raise DataError(path, None, f"{where}: expected {names.get(kind, kind.__name__)}, got {value!r:.60}")
    return value


def _article_examples(path: Path, article: Any, article_index: int) -> list[QAExample]:
    title = article.get("title", "") if isinstance(article, dict) else ""
    examples = []
    a_where = f"data[{article_index}]"
    for p_index, paragraph in enumerate(_typed(path, _field(path, article, "paragraphs", a_where), list,
                                               f"{a_where}.paragraphs")):
        where = f"{a_where}.paragraphs[{p_index}]"
        context = _typed(path, _field(path, paragraph, "context", where), str, f"{where}.context")
        for q_index, qa in enumerate(_typed(path, _field(path, paragraph, "qas", where), list, f"{where}.qas")):
            qa = _typed(path, qa, dict, f"{where}.qas[{q_index}]")
            q_where = f"question {str(qa.get('id', f'{where}.qas[{q_index}]'))[:60]}"
            answers = _typed(path, _field(path, qa, "answers", q_where), list, f"{q_where}: answers")
            texts = tuple(_typed(path, _field(path, a, "text", q_where), str, f"{q_where}: answer text")
                          for a in answers)
            starts = tuple(_typed(path, _field(path, a, "answer_start", q_where), int, f"{q_where}: answer_start")
                           for a in answers)
            question_id = _field(path, qa, "id", q_where)
            if not isinstance(question_id, (str, int)) or isinstance(question_id, bool):
                raise DataError(path, None, f"{q_where}: id must be text or an integer")
            examples.append(QAExample(
                id=str(question_id), question=_typed(path, _field(path, qa, "question", q_where), str,
                                                     f"{q_where}: question"),
                context=context, answers=texts, answer_starts=starts,
                is_impossible=bool(qa.get("is_impossible", False)), title=str(title),
            ))
    return examples


def answer_char_spans(example: QAExample) -> list[tuple[int, int]]:
    """Each distinct answer located in the context as ``(start, end)`` characters, end exclusive.

    An answer whose ``answer_start`` is off (CMRC 2018 has -1 and off-by-one starts) is
    located at its occurrence nearest to that start; an answer not in the context is left
    out. Spans exclude the answer's leading and trailing whitespace. Empty for an
    unanswerable question.
    """
    if example.is_impossible:
        return []
    context, spans = example.context, []
    for text, start in zip(example.answers, example.answer_starts):
        if not text:
            continue
        if context[start: start + len(text)] != text:
            found = _occurrences(context, text)
            if not found:
                continue
            start = min(found, key=lambda i: abs(i - start))
        end = start + len(text)
        start, end = start + len(text) - len(text.lstrip()), end - len(text) + len(text.rstrip())
        if start < end and (start, end) not in spans:
            spans.append((start, end))
    return spans


def answer_char_span(example: QAExample) -> tuple[int, int] | None:
    """The first of `answer_char_spans`, or None."""
    spans = answer_char_spans(example)
    return spans[0] if spans else None


def _occurrences(text: str, part: str) -> list[int]:
    found, i = [], text.find(part)
    while i >= 0:
        found.append(i)
        i = text.find(part, i + 1)
    return found


@dataclass
class QAFeature:
    """One window of one example."""

    inputs: dict[str, Any]
    """input_ids, token_type_ids, attention_mask, each (T,); with labels also the ints
    start_positions and end_positions."""
    example_index: int
    """Index of the example in the list given to `encode_qa`."""
    offsets: list[tuple[int, int] | None]
    """Character span in the context of each token; None for question and special tokens."""


def encode_qa(
    examples: Sequence[QAExample],
    tokenizer: TokenizerLike,
    *,
    max_length: int = 384,
    stride: int = 128,
    max_query_length: int = 64,
    with_labels: bool = True,
) -> list[QAFeature]:
    """Tokenize ``(question, context)`` pairs into one feature per window (module docstring).

    Questions are cut to `max_query_length` tokens; `stride` must be smaller than the context
    room left beside each question (else a `WindowError` naming it). With labels, an answerable
    example none of whose answers occurs in its context raises ValueError naming the question id.
    """
    questions, lengths = _truncated_questions(examples, tokenizer, max_query_length)
    specials = backend_of(tokenizer).num_special_tokens_to_add(is_pair=True)
    for index, (example, length) in enumerate(zip(examples, lengths)):
        room = max_length - length - specials
        if not 0 <= stride < room:
            raise WindowError(index, f"question {example.id}: doc_stride ({stride}) must be below the {room} "
                                     f"context tokens that max_length ({max_length}) leaves beside the question "
                                     f"({length} tokens); lower it with --set doc_stride=N")
    backend = truncating_backend(tokenizer, max_length, stride=stride, strategy="only_second")
    encodings = backend.encode_batch(list(zip(questions, [e.context for e in examples])))
    features = []
    for index, (example, encoding) in enumerate(zip(examples, encodings)):
        windows = [encoding, *encoding.overflowing]
        offsets = [_context_offsets(index, example, window) for window in windows]
        span = _training_span(example, offsets) if with_labels else None
        for window, window_offsets in zip(windows, offsets):
            inputs: dict[str, Any] = {"input_ids": window.ids, "token_type_ids": window.type_ids,
                                      "attention_mask": window.attention_mask}
            if with_labels:
                inputs["start_positions"], inputs["end_positions"] = _token_span(window_offsets, span)
            features.append(QAFeature(inputs, index, window_offsets))
    return features


def _truncated_questions(
    examples: Sequence[QAExample], tokenizer: TokenizerLike, limit: int,
) -> tuple[list[str], list[int]]:
    """Questions cut to `limit` tokens, and the token count of each after the cut."""
    plain = truncating_backend(tokenizer, None)
    questions = [e.question.lstrip() for e in examples]
    encodings = plain.encode_batch(questions, add_special_tokens=False)
    cut = [q if len(enc.offsets) <= limit else q[: enc.offsets[limit - 1][1]] for q, enc in zip(questions, encodings)]
    return cut, [min(limit, len(enc.ids)) for enc in encodings]


class WindowError(UserError):
    """A question leaves no room for windows of its context; `example_index` says which."""

    def __init__(self, example_index: int, message: str) -> None:
        super().__init__(message)
        self.example_index = example_index


def _context_offsets(index: int, example: QAExample, window: Any) -> list[tuple[int, int] | None]:
    offsets = [off if seq == 1 else None for off, seq in zip(window.offsets, window.sequence_ids)]
    if all(off is None for off in offsets):
        raise WindowError(index, f"question {example.id}: max_length leaves no room for the context")
    return offsets


def _training_span(example: QAExample, windows: list[list[tuple[int, int] | None]]) -> tuple[int, int] | None:
    """The answer to train on: the first whose text some window's tokens cover exactly (not,
    say, "8" inside the token "18"), else the first located one; None when unanswerable."""
    spans = answer_char_spans(example)
    if not spans and not example.is_impossible:
        raise ValueError(f"question {example.id}: none of its answers {list(example.answers)} "
                         f"occurs in its context")
    for span in spans:
        for offsets in windows:
            tokens = _token_span(offsets, span)
            if tokens != (0, 0) and _covered_text(example.context, offsets, tokens) == example.context[slice(*span)]:
                return span
    return spans[0] if spans else None


def _covered_text(context: str, offsets: list[tuple[int, int] | None], tokens: tuple[int, int]) -> str:
    first, last = offsets[tokens[0]], offsets[tokens[1]]
    return context[first[0]: last[1]].strip()  # type: ignore[index]


def _token_span(offsets: list[tuple[int, int] | None], span: tuple[int, int] | None) -> tuple[int, int]:
    """Token (start, end) of a character span, or (0, 0) (the [CLS] position) when there is no
    span or the window does not hold all of it."""
    if span is None:
        return 0, 0
    start_char, end_char = span
    context_tokens = [i for i, off in enumerate(offsets) if off is not None]
    first, last = offsets[context_tokens[0]], offsets[context_tokens[-1]]
    if first[0] > start_char or last[1] < end_char:  # type: ignore[index]
        return 0, 0
    start = max(i for i in context_tokens if offsets[i][0] <= start_char)  # type: ignore[index]
    end = min(i for i in context_tokens if offsets[i][1] >= end_char and i >= start)  # type: ignore[index]
    return start, end


@dataclass(frozen=True)
class QASpan:
    """A candidate answer: ``context[start:end]`` with score start_logit + end_logit."""

    text: str
    start: int
    end: int
    score: float


def nbest_spans(
    feature: QAFeature,
    context: str,
    start_logits: Sequence[float] | np.ndarray | torch.Tensor,
    end_logits: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> list[QASpan]:
    """The `n_best` highest-scoring valid spans of one window, best first.

    Logits have shape (T,) (padding beyond the feature's length is ignored). A span is
    valid when both ends lie in the context and it is 1..max_answer_length tokens long.
    """
    length = len(feature.offsets)
    in_context = np.array([off is not None for off in feature.offsets])
    starts = np.where(in_context, _as_numpy(start_logits)[:length], -np.inf)
    ends = np.where(in_context, _as_numpy(end_logits)[:length], -np.inf)
    top_starts = np.argsort(-starts, kind="stable")[:n_best]
    top_ends = np.argsort(-ends, kind="stable")[:n_best]
    spans = []
    for i in top_starts:
        for j in top_ends:
            if not (in_context[i] and in_context[j]) or j < i or j - i + 1 > max_answer_length:
                continue
            begin, finish = feature.offsets[i][0], feature.offsets[j][1]  # type: ignore[index]
            spans.append(QASpan(context[begin:finish], begin, finish, float(starts[i] + ends[j])))
    spans.sort(key=lambda s: -s.score)
    return spans[:n_best]


def rank_answers(
    features: Sequence[QAFeature],
    context: str,
    start_scores: Sequence[Any],
    end_scores: Sequence[Any],
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float | None = None,
    top_k: int | None = None,
) -> list[QASpan]:
    """The answers to one question over all its windows, best first: distinct, non-empty spans of
    `context` trimmed of surrounding whitespace, scored start + end (logits or log-probabilities,
    one (T,) row per window).

    With `null_threshold` (SQuAD v2) there is no answer ([]) when the no-answer score (the lowest
    start[0] + end[0] over windows) beats the best span by more than it. `top_k` keeps the best k.
    """
    spans: list[QASpan] = []
    null_score = np.inf
    for feature, start, end in zip(features, start_scores, end_scores):
        s, e = _as_numpy(start), _as_numpy(end)
        spans += nbest_spans(feature, context, s, e, n_best=n_best, max_answer_length=max_answer_length)
        null_score = min(null_score, float(s[0] + e[0]))
    answers: list[QASpan] = []
    seen: set[tuple[int, int]] = set()
    for span in sorted(spans, key=lambda span: -span.score):
        begin, finish = trim_span(context, span.start, span.end)
        if begin == finish or (begin, finish) in seen:
            continue
        seen.add((begin, finish))
        answers.append(QASpan(context[begin:finish], begin, finish, span.score))
        if top_k is not None and len(answers) == top_k:
            break
    if null_threshold is not None and (not answers or null_score - answers[0].score > null_threshold):
        return []
    return answers


def postprocess_qa(
    examples: Sequence[QAExample],
    features: Sequence[QAFeature],
    start_logits: Sequence[Any] | np.ndarray | torch.Tensor,
    end_logits: Sequence[Any] | np.ndarray | torch.Tensor,
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float | None = None,
) -> dict[str, str]:
    """Best answer text per question id (`rank_answers`) from per-window logits, each (F, T) or a
    list of (T,); "" when there is none."""
    if not (len(features) == len(start_logits) == len(end_logits)):
        raise ValueError(f"{len(features)} features but {len(start_logits)} start and "
                         f"{len(end_logits)} end logit rows")
    by_example: dict[int, list[int]] = {}
    for f_index, feature in enumerate(features):
        by_example.setdefault(feature.example_index, []).append(f_index)
    answers = {}
    for e_index, example in enumerate(examples):
        rows = by_example.get(e_index, [])
        ranked = rank_answers([features[i] for i in rows], example.context, [start_logits[i] for i in rows],
                              [end_logits[i] for i in rows], n_best=n_best, max_answer_length=max_answer_length,
                              null_threshold=null_threshold, top_k=1)
        answers[example.id] = ranked[0].text if ranked else ""
    return answers


def _as_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)
