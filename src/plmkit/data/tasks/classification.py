"""Text classification data: single texts or text pairs with one label each.

Works for GLUE-style TSV (``sentence<TAB>label`` with a header), CSV (quoted fields, with
or without a header) and JSON Lines. Several text columns can be joined into one text
(e.g. AG News title + description); a second column gives the pair text (NLI, paraphrase).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plmkit.data.tasks.features import TokenizerLike, truncating_backend
from plmkit.data.tasks.labels import LabelMap
from plmkit.data.tasks.records import Column, DataFormatError, TableFormat, read_table


@dataclass(frozen=True)
class TextExample:
    """One example: `text` (and `pair` for pair tasks) with its label name ("" when unlabeled)."""

    text: str
    label: str = ""
    pair: str | None = None
    where: str = field(default="", compare=False)
    """``file:line`` of the row, for error messages."""


def read_classification(
    path: str | Path,
    text_column: Column | Sequence[Column] = "sentence",
    label_column: Column | None = "label",
    pair_column: Column | None = None,
    *,
    fmt: TableFormat | None = None,
    header: bool = True,
    column_names: Sequence[str] | None = None,
) -> list[TextExample]:
    """Read a classification file into examples, one per non-blank row.

    `text_column` may list several columns, joined with a space. `label_column=None` reads
    unlabeled data (label ""). A missing column, a short row or an empty label raises
    `DataFormatError` naming ``file:line``.

    Examples: SST-2 ``read_classification("train.tsv")``; ChnSentiCorp
    ``read_classification("train.tsv", "text_a")``; AG News (header ``label,content``)
    ``read_classification("test.csv", "content")``; the original 3-column AG News CSV
    ``read_classification(p, ["title", "description"], "class", header=False,
    column_names=["class", "title", "description"])``.
    """
    texts = [text_column] if isinstance(text_column, (str, int)) else list(text_column)
    columns: list[Column] = list(texts)
    if label_column is not None:
        columns.append(label_column)
    if pair_column is not None:
        columns.append(pair_column)
    examples = []
    for line, values in read_table(path, columns, fmt=fmt, header=header, column_names=column_names):
        where = f"{path}:{line}"
        text = " ".join(_text(path, line, texts[i], v) for i, v in enumerate(values[: len(texts)]))
        rest = values[len(texts):]
        label = ""
        if label_column is not None:
            label = _text(path, line, label_column, rest.pop(0))
            if not label:
                raise DataFormatError(path, line, f"empty label in column {label_column!r}")
        pair = _text(path, line, pair_column, rest[0]) if pair_column is not None else None
        examples.append(TextExample(text, label, pair, where))
    return examples


def _text(path: str | Path, line: int, column: Column, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataFormatError(path, line, f"column {column!r} holds {type(value).__name__}, expected text")
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
