"""Text classification data: single texts or text pairs with one label each.

Works for GLUE-style TSV (``sentence<TAB>label`` with a header), CSV (quoted fields, with
or without a header), JSON Lines, Parquet, Hugging Face datasets folders and plain text (one
text per line, no labels). Several text columns can be joined into one text (e.g. AG News
title + description); a second column gives the pair text (NLI, paraphrase). Columns not given
are found by their usual names (`plmkit.data.io.TEXT_COLUMNS`, `LABEL_COLUMNS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plmkit.data.tasks.features import TokenizerLike, truncating_backend
from plmkit.data.tasks.labels import LabelMap
from plmkit.data.io import (
    LABEL_COLUMNS, TEXT_COLUMNS, Column, MissingColumnError, TableFormat, detect_format, find_column, read_table,
    table_columns,
)
from plmkit.errors import DataError


@dataclass(frozen=True)
class TextExample:
    """One example: `text` (and `pair` for pair tasks) with its label name ("" when unlabeled)."""

    text: str
    label: str = ""
    pair: str | None = None
    where: str = field(default="", compare=False)
    """``file:line`` of the row, for error messages."""


def find_columns(path: str | Path, text_column: Column | Sequence[Column] | None, label_column: Column | None, *,
                 fmt: TableFormat | None = None, header: bool = True, column_names: Sequence[str] | None = None,
                 labeled: bool = True) -> tuple[Column | Sequence[Column], Column | None]:
    """The text and label columns of a file: those given, else found by their usual names.

    The label column is None when it is not given and the file has none of the usual names (an
    error with `labeled`, naming the columns there are).
    """
    names: list[str] | None = None
    if text_column is None or label_column is None:
        names = table_columns(path, fmt, header, column_names)
    if text_column is None:
        text_column = find_column(path, names, TEXT_COLUMNS, "text", "--text-column")
        if text_column is None:
            raise MissingColumnError(path, 1, f"no text column among {', '.join(names or [])}: name it with "
                                              f"--text-column (looked for {', '.join(TEXT_COLUMNS)})")
    if label_column is None:
        label_column = find_column(path, names, LABEL_COLUMNS, "label", "--set label_column=INDEX")
        if label_column is None and labeled and (fmt or detect_format(path)) == "txt":
            raise MissingColumnError(path, None, "a .txt file holds one text per line and no labels; give a "
                                                 "labelled file (.tsv .csv .jsonl .parquet: a text and a label column)")
        if label_column is None and labeled:
            raise MissingColumnError(path, 1, f"no label column among {', '.join(names or [])}: name it with "
                                              f"--set label_column=NAME (looked for {', '.join(LABEL_COLUMNS)})")
    return text_column, label_column


def read_classification(
    path: str | Path,
    text_column: Column | Sequence[Column] | None = None,
    label_column: Column | None = "label",
    pair_column: Column | None = None,
    *,
    fmt: TableFormat | None = None,
    header: bool = True,
    column_names: Sequence[str] | None = None,
) -> list[TextExample]:
    """Read a classification file into examples, one per non-blank row.

    `text_column` may list several columns, joined with a space; None finds it by name
    (`find_columns`). `label_column=None` reads unlabeled data (label ""). A missing column, a
    malformed row (more or fewer fields than the header), an empty label, or labels written in
    different JSON types (1 and "1") raise `plmkit.errors.DataError` naming ``file:line``.

    Examples: SST-2 ``read_classification("train.tsv")``; ChnSentiCorp
    ``read_classification("train.tsv", "text_a")``; AG News (header ``label,content``)
    ``read_classification("test.csv", "content")``; the original 3-column AG News CSV
    ``read_classification(p, ["title", "description"], "class", header=False,
    column_names=["class", "title", "description"])``.
    """
    if text_column is None:
        text_column, _ = find_columns(path, None, label_column, fmt=fmt, header=header, column_names=column_names,
                                      labeled=False)
    texts = [text_column] if isinstance(text_column, (str, int)) else list(text_column)
    columns: list[Column] = list(texts)
    if label_column is not None:
        columns.append(label_column)
    if pair_column is not None:
        columns.append(pair_column)
    examples = []
    first_label: tuple[int, str] | None = None  # (line, type) of the first label: all must be alike
    for line, values in read_table(path, columns, fmt=fmt, header=header, column_names=column_names):
        where = f"{path}:{line}"
        text = " ".join(_text(path, line, texts[i], v) for i, v in enumerate(values[: len(texts)]))
        rest = values[len(texts):]
        label = ""
        if label_column is not None:
            value = rest.pop(0)
            label = _text(path, line, label_column, value)
            if not label:
                raise DataError(path, line, f"empty label in column {label_column!r}")
            first_label = first_label or (line, _kind(value))
            if _kind(value) != first_label[1]:
                raise DataError(path, line, f"label {value!r} is {_kind(value)} but the label on line "
                                            f"{first_label[0]} is {first_label[1]}: write every label the same "
                                            "way (all text, or all numbers)")
        pair = _text(path, line, pair_column, rest[0]) if pair_column is not None else None
        examples.append(TextExample(text, label, pair, where))
    return examples


def _kind(value: Any) -> str:
    return {str: "text", int: "an integer", float: "a decimal number"}.get(type(value), type(value).__name__)


def _text(path: str | Path, line: int, column: Column, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(path, line, f"column {column!r} holds {type(value).__name__}, expected text")
    return str(value).strip()


def encode_classification(
    examples: Sequence[TextExample],
    tokenizer: TokenizerLike,
    label_map: LabelMap | None = None,
    *,
    max_length: int = 128,
) -> list[dict[str, Any]]:
    """Tokenize examples into features ``input_ids, token_type_ids, attention_mask[, labels]``.

    ``labels`` (an int) is present when `label_map` is given; an example whose label is not
    in it raises ValueError naming the example's ``file:line``. Texts are truncated to
    `max_length` tokens including special tokens (longest text first for pairs).
    """
    backend = truncating_backend(tokenizer, max_length)
    inputs: list[Any] = [e.text if e.pair is None else (e.text, e.pair) for e in examples]
    features = []
    for example, enc in zip(examples, backend.encode_batch(inputs)):
        feature: dict[str, Any] = {
            "input_ids": enc.ids, "token_type_ids": enc.type_ids, "attention_mask": enc.attention_mask,
        }
        if label_map is not None:
            feature["labels"] = label_map.encode(example.label, example.where)
        features.append(feature)
    return features
