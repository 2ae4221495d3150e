"""The one reader stack for text files: lines, formats, tables, and corpora of documents.

Every file plmkit reads as data (a pretraining corpus, a task's training file) goes through
here, with one encoding policy and one error type:

- `text_lines`: numbered lines of a file, plain or gzip-compressed (``name.ext.gz``). UTF-8; a
  leading byte-order mark is dropped; lines split on "\\n" only (U+2028 inside a line stays).
- `detect_format`: the format from the suffix (``.gz`` looked through): txt, jsonl (.jsonl,
  .ndjson), csv, tsv (.tsv, .tab), json (.json holding an array; a .json file of JSON Lines,
  as many datasets ship them, reads as jsonl), parquet, and arrow (a Hugging Face `datasets`
  folder from ``save_to_disk``, or an .arrow file): those two via `plmkit.data.io_arrow`.
- `read_table`: the requested columns of each record of a csv / tsv / jsonl / json / parquet /
  arrow file; a .txt file is a table of one column, "text", one row per non-blank line.
- `table_columns` and `find_column`: a file's column names, and the text (or label) column found
  by its usual names (`TEXT_COLUMNS`, `LABEL_COLUMNS`) when none is given.

Bad input is a `plmkit.errors.DataError` whose message starts with ``file:line:`` and then
``REASON: detail`` (invalid UTF-8, invalid JSON, not a JSON object, missing field, invalid
Unicode, malformed row, malformed CSV, ...). A reader given ``on_error`` hands it each
row-level error instead of raising (the corpus's ``errors="skip"`` counts them by REASON).

The corpus readers (`Corpus`, `expand_inputs`, `read_documents`) live in `plmkit.data.corpus`
and are importable from here too.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from plmkit.data.io_arrow import COLUMNAR_FORMATS, columnar_names, columnar_records, is_dataset_folder
from plmkit.data.sentences import CJK_CHARS, is_cjk, split_sentences
from plmkit.errors import DataError, UserError

OnError = Callable[[DataError], None]
"""Called with each row-level error instead of raising it (the row is then skipped)."""
Column = str | int
TableFormat = Literal["csv", "tsv", "jsonl", "json", "txt", "parquet", "arrow"]
FORMATS = ("txt", "jsonl", "json", "csv", "tsv", "parquet", "arrow")
SUFFIX_FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                   ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".arrow": "arrow"}
TEXT_COLUMNS = ("text", "sentence", "content", "review", "document", "body", "comment", "tweet", "text_a",
                "utterance", "message", "description", "article", "abstract")
"""Names of a text column, in order of preference, when none is given."""
LABEL_COLUMNS = ("label", "labels", "class", "category", "sentiment", "polarity", "target", "y")
"""Names of a label column, in order of preference, when none is given."""

class MissingColumnError(DataError):
    """A column or field the reader was asked for is not in the file (its header or a record)."""


# ---------------------------------------------------------------------------------------------
# Lines


def _raise(error: DataError) -> None:
    raise error


def raw_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines without their line ending (split on b"\\n" only; gzip by suffix)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                yield number, raw.rstrip(b"\r\n")
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(path, None, f"corrupt gzip file: {e}") from None


def decode_line(path: str | Path, number: int, raw: bytes) -> str:
    """One raw line as text: UTF-8, a byte-order mark on line 1 dropped; a DataError otherwise."""
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        hint = " (the file looks like UTF-16)" if number == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise DataError(path, number, f"invalid UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}{hint}; "
                                      "re-encode the file as UTF-8") from None


def text_lines(path: str | Path, on_error: OnError | None = None) -> Iterator[tuple[int, str]]:
    """Numbered lines of a UTF-8 text file (plain or .gz), without their line endings.

    An undecodable line is a DataError naming it (or goes to `on_error` and is left out).
    """
    for number, raw in raw_lines(path):
        try:
            text = decode_line(path, number, raw)
        except DataError as e:
            if on_error is None:
                raise
            on_error(e)
            continue
        yield number, text


# ---------------------------------------------------------------------------------------------
# Formats


def detect_format(path: str | Path, default: str | None = None) -> str:
    """The format of a file from its suffix (``.gz`` looked through): txt, jsonl, json, csv or tsv.

    A ``.json`` file is a JSON array when its first non-blank character is "[", else JSON Lines.
    An unknown suffix gives `default`, or a UserError when there is none.
    """
    path = Path(path)
    if is_dataset_folder(path):
        return "arrow"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    kind = SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    if kind is None:
        if default is None:
            raise UserError(f"{path}: cannot tell the format from the suffix; name it, e.g. --set format=tsv "
                            f"({', '.join(FORMATS)})")
        return default
    if kind == "json" and path.is_file() and _first_char(path) not in ("[", ""):
        return "jsonl"
    return kind


def _first_char(path: Path) -> str:
    for number, raw in raw_lines(path):
        text = raw.lstrip(b"\xef\xbb\xbf" if number == 1 else b"").strip()
        if text:
            return chr(text[0])
    return ""


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(path: str | Path, line: int | None, text: str) -> Any:
    """A JSON value; invalid JSON, NaN / Infinity and lone surrogate escapes are DataErrors."""
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise DataError(path, line if line is not None else e.lineno,
                        f"invalid JSON: {e.msg} at column {e.colno}") from None
    except ValueError as e:
        raise DataError(path, line, f"invalid JSON: {e}") from None
    except RecursionError:
        raise DataError(path, line, "invalid JSON: nested too deeply") from None
    _check_unicode(path, line, value)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_unicode(path: str | Path, line: int | None, value: Any) -> None:
    """Refuse strings with lone surrogates (JSON escapes like "\\ud800"): no tokenizer can encode them."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                raise DataError(path, line, "invalid Unicode: a lone surrogate (\\ud800-\\udfff) escape")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def json_records(path: str | Path, fmt: str, on_error: OnError | None = None) -> Iterator[tuple[int, Any]]:
    """(line, value) of each record of a JSON Lines file (blank lines skipped) or of a JSON array
    (the line each element starts on). Errors of one record go to `on_error` when given."""
    if fmt == "jsonl":
        for number, line in text_lines(path, on_error):
            if not line.strip():
                continue
            try:
                value = parse_json(path, number, line)
            except DataError as e:
                if on_error is None:
                    raise
                on_error(e)
                continue
            yield number, value
        return
    text = "\n".join(line for _, line in text_lines(path))
    data = parse_json(path, None, text)
    if not isinstance(data, list):
        raise DataError(path, 1, f"not a JSON array: expected a list of records, got {type(data).__name__}")
    yield from zip(_element_lines(text), data)


def _element_lines(text: str) -> Iterator[int]:
    """The line on which each element of the JSON array `text` starts (it is valid JSON)."""
    decoder, index = json.JSONDecoder(), text.index("[") + 1
    while True:
        index = _skip_space(text, index)
        if text[index] == "]":
            return
        yield text.count("\n", 0, index) + 1
        _, index = decoder.raw_decode(text, index)
        index = _skip_space(text, index)
        if text[index] == ",":
            index += 1


def _skip_space(text: str, index: int) -> int:
    while text[index] in " \t\r\n":
        index += 1
    return index


def delimited_rows(path: str | Path, fmt: str, on_error: OnError | None = None) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each row of a CSV file (quoted fields may span lines; a quote
    never closed is an error) or a TSV file (split on tabs, no quoting: the GLUE convention)."""
    if fmt == "tsv":
        for number, line in text_lines(path, on_error):
            yield number, line.split("\t")
        return
    numbered = text_lines(path, on_error)
    current = [0]

    def lines() -> Iterator[str]:
        for number, line in numbered:
            current[0] = number
            yield line + "\n"  # keeps newlines inside quoted fields

    reader = csv.reader(lines(), strict=True)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            what = "a quoted field is never closed" if "unexpected end of data" in str(e) else str(e)
            raise DataError(path, start, f"malformed CSV: {what}") from None
        yield start, fields
        start = current[0] + 1


def read_table(
    path: str | Path,
    columns: Sequence[Column],
    *,
    fmt: str | None = None,
    header: bool = True,
    column_names: Sequence[str] | None = None,
    on_error: OnError | None = None,
) -> Iterator[tuple[int, list[Any]]]:
    """Yield ``(line, [value of each requested column])`` for every non-blank record.

    Columns are named by header name (or by `column_names` for a file without a header) or
    by 0-based index; JSON columns are object keys. In CSV/TSV every row must have as many
    fields as the header (or `column_names`): a row with more or fewer (a stray tab, a comma
    outside quotes) is malformed, never read as other columns. A requested column the file
    lacks is a `MissingColumnError`; row-level errors go to `on_error` when given.
    """
    fmt = fmt or detect_format(path)
    if fmt in ("jsonl", "json"):
        yield from _json_table(path, columns, fmt, on_error)
    elif fmt in ("csv", "tsv"):
        yield from _delimited_table(path, columns, fmt, header, column_names, on_error)
    elif fmt == "txt":
        yield from _line_table(path, columns, on_error)
    elif fmt in COLUMNAR_FORMATS:
        yield from _columnar_table(path, columns, fmt)
    else:
        raise UserError(f"{path}: format {fmt!r} is not a table; use one of {', '.join(FORMATS)}")


def _line_table(path: str | Path, columns: Sequence[Column],
                on_error: OnError | None) -> Iterator[tuple[int, list[Any]]]:
    """A .txt file as a table of one column, "text" (index 0): each non-blank line, stripped."""
    for column in columns:
        if column not in ("text", 0):
            raise MissingColumnError(path, None, f"no column {column!r}: a .txt file holds one text per line "
                                                 "(its one column is \"text\")")
    for number, line in text_lines(path, on_error):
        if line.strip():
            yield number, [line.strip()] * len(columns)


def _columnar_table(path: str | Path, columns: Sequence[Column], fmt: str) -> Iterator[tuple[int, list[Any]]]:
    names = columnar_names(path, fmt)
    wanted = [names[column_index(path, c, names)] if isinstance(c, int) else c for c in columns]
    for c in wanted:
        if c not in names:
            raise MissingColumnError(path, None, f"no column {c!r} (columns: {', '.join(names)})")
    for row, record in columnar_records(path, fmt, list(dict.fromkeys(wanted))):
        yield row, [record[c] for c in wanted]


def table_columns(path: str | Path, fmt: str | None = None, header: bool = True,
                  column_names: Sequence[str] | None = None) -> list[str] | None:
    """The column names of a table file: its header (or `column_names`), the keys of its first JSON
    record, its Parquet / Arrow schema, or ["text"] for a .txt file; None when it has no names."""
    fmt = fmt or detect_format(path)
    if column_names is not None:
        return list(column_names)
    if fmt == "txt":
        return ["text"]
    if fmt in COLUMNAR_FORMATS:
        return columnar_names(path, fmt)
    if fmt in ("csv", "tsv"):
        first = next(delimited_rows(path, fmt), None) if header else None
        return [name.strip() for name in first[1]] if first is not None else None
    for _, record in json_records(path, fmt):
        return list(record) if isinstance(record, dict) else None
    return None


def find_column(path: str | Path, names: Sequence[str] | None, candidates: Sequence[str], what: str,
                flag: str) -> str | None:
    """The first of `candidates` among a file's column `names` (exact, else ignoring case); None
    when none is there. A file without column names is a UserError that asks for `flag`."""
    if names is None:
        raise UserError(f"{path}: no header to find the {what} column by name; give it with {flag} (an index)")
    for candidate in candidates:
        if candidate in names:
            return candidate
    lowered = {name.lower(): name for name in names}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _json_table(path: str | Path, columns: Sequence[Column], fmt: str,
                on_error: OnError | None) -> Iterator[tuple[int, list[Any]]]:
    report = on_error or _raise
    for number, record in json_records(path, fmt, on_error):
        if not isinstance(record, dict):
            report(DataError(path, number, f"not a JSON object: got {json_kind(record)}"))
            continue
        missing = [c for c in columns if c not in record]
        if missing:
            fields = ", ".join(map(str, list(record)[:10])) or "none"
            report(MissingColumnError(path, number, f"missing field {missing[0]!r}: fields are {fields}"))
            continue
        yield number, [record[c] for c in columns]


def json_kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _delimited_table(path: str | Path, columns: Sequence[Column], fmt: str, header: bool,
                     column_names: Sequence[str] | None, on_error: OnError | None) -> Iterator[tuple[int, list[Any]]]:
    report = on_error or _raise
    rows = delimited_rows(path, fmt, on_error)
    names = list(column_names) if column_names is not None else None
    if header:
        first = next(rows, None)
        if first is None:
            raise DataError(path, 1, "empty file: expected a header row")
        names = names or [name.strip() for name in first[1]]
    indices = [column_index(path, c, names) for c in columns]
    for number, fields in rows:
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        if names is not None and len(fields) != len(names):
            where = "the header has" if header and column_names is None else "the columns are"
            report(DataError(path, number, f"malformed row: {len(fields)} fields but {where} {len(names)} "
                                           f"({'a stray tab?' if fmt == 'tsv' else 'a comma outside quotes?'})"))
            continue
        short = [(c, i) for c, i in zip(columns, indices) if i >= len(fields)]
        if short:
            report(DataError(path, number, f"malformed row: {len(fields)} fields, so column {short[0][0]!r} "
                                           f"(index {short[0][1]}) is missing"))
            continue
        yield number, [fields[i] for i in indices]


def column_index(path: str | Path, column: Column, names: Sequence[str] | None) -> int:
    """The 0-based index of a column given by name (in `names`) or by index."""
    if isinstance(column, int):
        if column < 0:
            raise UserError(f"{path}: column index {column} must be >= 0")
        return column
    if names is None:
        raise UserError(f"{path}: column {column!r} is named but the file has no header; "
                        "give the column names or a 0-based index")
    if column not in names:
        raise MissingColumnError(path, 1, f"no column {column!r} in the header (columns: {', '.join(names)})")
    return list(names).index(column)


csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

_CORPUS_NAMES = ("Corpus", "CorpusError", "Document", "ErrorPolicy", "ReadStats", "expand_inputs", "read_documents")


def __getattr__(name: str) -> Any:
    """The corpus readers, from `plmkit.data.corpus` (imported on first use: it builds on this module)."""
    if name in _CORPUS_NAMES:
        from plmkit.data import corpus

        return getattr(corpus, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CJK_CHARS", "FORMATS", "LABEL_COLUMNS", "SUFFIX_FORMATS", "TEXT_COLUMNS", "Column", "MissingColumnError",
    "OnError", "TableFormat", "column_index", "decode_line", "delimited_rows", "detect_format", "find_column",
    "is_cjk", "is_dataset_folder", "json_kind", "json_records", "parse_json", "raw_lines", "read_table",
    "split_sentences", "table_columns", "text_lines", *_CORPUS_NAMES,
]
