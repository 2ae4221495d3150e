"""Named-entity recognition data: CoNLL-style files, tagging schemes, word-piece alignment.

Files hold one token per line (token first, tag last, other columns ignored), a blank line
between sentences; ``-DOCSTART-`` lines are skipped. Tags are ``O`` or ``P-TYPE`` with P one
of B, I, E, S (BIO / IOB1 / BIOES) or M, which BMES files (Weibo NER) use for inside tokens
and which is read as I.

Word labels reach word pieces through the tokenizer's word ids: the first piece of a word
carries its label and the other pieces -100 (ignored by the loss), or, with
``label_all_subtokens``, the label continued inside the word (B-X, I-X, I-X...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from plmkit.data.tasks.features import IGNORE_INDEX, TokenizerLike, truncating_backend
from plmkit.data.tasks.labels import LabelMap
from plmkit.data.io import MissingColumnError, text_lines
from plmkit.errors import DataError

Scheme = Literal["bio", "bioes"]
_PREFIXES = ("B", "I", "E", "S", "M")


@dataclass(frozen=True)
class TaggedSentence:
    """A sentence as words with one tag per word."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    where: str = field(default="", compare=False)
    """``file:line`` of the first word."""


def read_conll(path: str | Path, *, scheme: Scheme | None = None) -> list[TaggedSentence]:
    """Read a CoNLL-format file; `scheme` converts the tags to "bio" (IOB2) or "bioes".

    A line without a tag or with a tag that is not ``O`` / ``P-TYPE`` raises
    `plmkit.errors.DataError` naming ``file:line``.
    """
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    first_line = 0
    for number, line in text_lines(path):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                sentences.append(_sentence(words, tags, scheme, f"{path}:{first_line}"))
            words, tags = [], []
            continue
        fields = line.split()
        if len(fields) < 2:
            raise MissingColumnError(path, number, f"expected 'token ... tag', got {line[:80]!r}")
        if not words:
            first_line = number
        words.append(fields[0])
        tags.append(_checked_tag(path, number, fields[-1]))
    if words:
        sentences.append(_sentence(words, tags, scheme, f"{path}:{first_line}"))
    return sentences


def _checked_tag(path: str | Path, line: int, tag: str) -> str:
    if tag == "O":
        return tag
    prefix, dash, kind = tag.partition("-")
    if not dash or prefix not in _PREFIXES or not kind:
        raise DataError(path, line, f"tag {tag[:40]!r} is not 'O' or one of B-/I-/E-/S-/M- + type")
    return f"I-{kind}" if prefix == "M" else tag


def _sentence(words: list[str], tags: list[str], scheme: Scheme | None, where: str) -> TaggedSentence:
    if scheme == "bio":
        tags = to_bio(tags)
    elif scheme == "bioes":
        tags = to_bioes(tags)
    return TaggedSentence(tuple(words), tuple(tags), where)


def to_bio(tags: Sequence[str]) -> list[str]:
    """Convert IOB1 / IOB2 / BIOES (or BMES) tags to IOB2: every entity starts with B-.

    An inside tag that cannot continue the previous entity (after O, after E-/S-, or of
    another type) starts a new one, so ill-formed input yields well-formed output.
    """
    out: list[str] = []
    prev_kind, prev_open = "", False
    for tag in tags:
        if tag == "O":
            out.append(tag)
            prev_kind, prev_open = "", False
            continue
        prefix, _, kind = tag.partition("-")
        prefix = "I" if prefix == "M" else prefix
        begins = prefix in ("B", "S") or not prev_open or kind != prev_kind
        out.append(("B-" if begins else "I-") + kind)
        prev_kind, prev_open = kind, prefix not in ("E", "S")
    return out


def to_bioes(tags: Sequence[str]) -> list[str]:
    """Convert any scheme `to_bio` accepts to BIOES: single-token entities S-, last tokens E-."""
    bio = to_bio(tags)
    out = []
    for i, tag in enumerate(bio):
        if tag == "O":
            out.append(tag)
            continue
        kind = tag[2:]
        continues = i + 1 < len(bio) and bio[i + 1] == f"I-{kind}"
        if tag.startswith("B-"):
            out.append(("B-" if continues else "S-") + kind)
        else:
            out.append(("I-" if continues else "E-") + kind)
    return out


@dataclass
class TokenFeature:
    """Model inputs for one sentence, plus what is needed to map predictions back to words."""

    inputs: dict[str, Any]
    """input_ids, token_type_ids, attention_mask and (when tags are known) labels, each (T,)."""
    word_ids: list[int | None]
    """Word index of each token; None for special tokens."""
    num_words: int


def encode_ner(
    sentences: Sequence[TaggedSentence],
    tokenizer: TokenizerLike,
    label_map: LabelMap | None = None,
    *,
    max_length: int = 128,
    label_all_subtokens: bool = False,
) -> list[TokenFeature]:
    """Tokenize pre-split words and align word tags to tokens (see the module docstring).

    Without `label_map` no ``labels`` are built (prediction). Words cut off by `max_length`
    get no tokens; `word_tags` tags them "O". An unknown tag raises ValueError naming the
    sentence's ``file:line``.
    """
    backend = truncating_backend(tokenizer, max_length)
    encodings = backend.encode_batch([list(s.words) for s in sentences], is_pretokenized=True)
    features = []
    for sentence, enc in zip(sentences, encodings):
        inputs: dict[str, Any] = {
            "input_ids": enc.ids, "token_type_ids": enc.type_ids, "attention_mask": enc.attention_mask,
        }
        if label_map is not None:
            inputs["labels"] = _token_labels(sentence, enc.word_ids, label_map, label_all_subtokens)
        features.append(TokenFeature(inputs, list(enc.word_ids), len(sentence.words)))
    return features


def _token_labels(
    sentence: TaggedSentence, word_ids: list[int | None], label_map: LabelMap, label_all: bool,
) -> list[int]:
    if not label_all:
        labels, previous = [], None
        for word in word_ids:
            first = word is not None and word != previous
            labels.append(label_map.encode(sentence.tags[word], sentence.where) if first else IGNORE_INDEX)
            previous = word
        return labels
    bio = to_bio(sentence.tags)
    piece_tags, previous = [], None
    for word in word_ids:
        if word is None:
            piece_tags.append(None)
        elif word != previous or bio[word] == "O":
            piece_tags.append(bio[word])
        else:
            piece_tags.append("I-" + bio[word][2:])
        previous = word
    if any(t.startswith(("E-", "S-")) for t in label_map.id2label):
        converted = iter(to_bioes([t for t in piece_tags if t is not None]))
        piece_tags = [None if t is None else next(converted) for t in piece_tags]
    return [IGNORE_INDEX if t is None else label_map.encode(t, sentence.where) for t in piece_tags]


def word_tags(
    token_predictions: Sequence[int], word_ids: Sequence[int | None], label_map: LabelMap, num_words: int,
) -> list[str]:
    """Map per-token predicted label ids, shape (T,), back to one tag per word.

    Each word takes the prediction of its first token; words without tokens (truncated)
    get "O". Padding positions beyond ``len(word_ids)`` are ignored.
    """
    tags = ["O"] * num_words
    for word, token in first_tokens(word_ids[: len(token_predictions)]).items():
        tags[word] = label_map.decode(int(token_predictions[token]))
    return tags


def first_tokens(word_ids: Sequence[int | None]) -> dict[int, int]:
    """Word index -> position of the word's first token, the one that carries its tag (words cut
    off by truncation have none); special tokens (word id None) belong to no word."""
    first: dict[int, int] = {}
    for token, word in enumerate(word_ids):
        if word is not None and word not in first:
            first[word] = token
    return first
