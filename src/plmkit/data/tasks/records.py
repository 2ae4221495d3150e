"""Row readers for task files: CSV, TSV and JSON Lines, plain or gzip, with line numbers.

Every reader yields ``(line_number, values)`` so that a later check can name ``file:line``.
Errors on user input are `DataFormatError`, whose message starts with ``path:line:``.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from plmkit.errors import DataError

TableFormat = Literal["csv", "tsv", "jsonl"]
Column = str | int
_SUFFIX_FORMATS: dict[str, TableFormat] = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
}


class DataFormatError(DataError):
    """A task file does not have the expected layout; `path` and `line` say where."""


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a UTF-8 file (``.gz`` decompressed), line endings kept.

    Lines split on "\\n" only (U+2028 inside a line stays there); a leading BOM is dropped.
    Undecodable bytes raise `DataFormatError` naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(path, number, f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                                                    f"{e.start + 1}); re-encode the file as UTF-8") from None


def detect_format(path: str | Path) -> TableFormat:
    """The table format implied by the file name (``.csv``, ``.tsv``, ``.jsonl``; ``.gz`` ignored)."""
    path = Path(path)
    suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    if suffix.lower() not in _SUFFIX_FORMATS:
        raise ValueError(f"{path}: cannot tell the format from the suffix {suffix!r}; "
                         f"pass fmt= one of 'csv', 'tsv', 'jsonl'")
    return _SUFFIX_FORMATS[suffix.lower()]


def read_table(
    path: str | Path,
    columns: Sequence[Column],
    *,
    fmt: TableFormat | None = None,
    header: bool = True,
    column_names: Sequence[str] | None = None,
) -> Iterator[tuple[int, list[Any]]]:
    """Yield ``(line, [value of each requested column])`` for every non-blank row.

    Columns are named by header name (or by `column_names` for a file without a header) or
    by 0-based index; JSON Lines columns are object keys. A missing column, a short row or
    invalid JSON raises `DataFormatError` naming the file and line.
    """
    fmt = fmt or detect_format(path)
    if fmt == "jsonl":
        yield from _read_jsonl(path, columns)
    else:
        yield from _read_delimited(path, columns, fmt, header, column_names)


def _read_jsonl(path: str | Path, columns: Sequence[Column]) -> Iterator[tuple[int, list[Any]]]:
    for number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, number, f"invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataFormatError(path, number, f"expected a JSON object, got {type(record).__name__}")
        missing = [c for c in columns if c not in record]
        if missing:
            raise DataFormatError(path, number, f"missing field {missing[0]!r}; fields are {sorted(record)}")
        yield number, [record[c] for c in columns]


def _read_delimited(
    path: str | Path, columns: Sequence[Column], fmt: TableFormat, header: bool,
    column_names: Sequence[str] | None,
) -> Iterator[tuple[int, list[Any]]]:
    rows = _csv_rows(path) if fmt == "csv" else _tsv_rows(path)
    names = list(column_names) if column_names is not None else None
    if header:
        first = next(rows, None)
        if first is None:
            raise DataFormatError(path, 1, "empty file: expected a header row")
        names = names or [name.strip() for name in first[1]]
    indices = [_column_index(path, c, names) for c in columns]
    for number, fields in rows:
        if len(fields) == 1 and not fields[0].strip():
            continue
        for column, index in zip(columns, indices):
            if index >= len(fields):
                raise DataFormatError(path, number, f"row has {len(fields)} fields, so column {column!r} "
                                                    f"(index {index}) is missing")
        yield number, [fields[i] for i in indices]


def _column_index(path: str | Path, column: Column, names: list[str] | None) -> int:
    if isinstance(column, int):
        return column
    if names is None:
        raise DataFormatError(path, 1, f"column {column!r} is named but the file has no header; "
                                       f"pass column_names= or a 0-based index")
    if column not in names:
        raise DataFormatError(path, 1, f"no column {column!r}; columns are {names}")
    return names.index(column)


def _csv_rows(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """CSV records with their first line number (a quoted field may span lines)."""
    reader = csv.reader(line for _, line in text_lines(path))
    start = 1
    try:
        for fields in reader:
            yield start, fields
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataFormatError(path, reader.line_num, f"malformed CSV: {e}") from None


def _tsv_rows(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """Tab-separated rows with no quoting (the GLUE convention: quotes are ordinary text)."""
    for number, line in text_lines(path):
        yield number, line.rstrip("\r\n").split("\t")
