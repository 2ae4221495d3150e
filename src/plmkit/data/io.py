"""The one reader stack for text files: lines, formats, tables, and corpora of documents.

Every file plmkit reads as data (a pretraining corpus, a task's training file) goes through
here, with one encoding policy and one error type:

- `text_lines`: numbered lines of a file, plain or gzip-compressed (``name.ext.gz``). UTF-8; a
  leading byte-order mark is dropped; lines split on "\\n" only (U+2028 inside a line stays).
- `detect_format`: the format from the suffix (``.gz`` looked through): txt, jsonl (.jsonl,
  .ndjson), csv, tsv (.tsv, .tab), json (.json holding an array; a .json file of JSON Lines,
  as many datasets ship them, reads as jsonl).
- `read_table`: the requested columns of each record of a csv / tsv / jsonl / json file.
- `Corpus`: documents (lists of sentences) of files, directories and glob patterns.

Bad input is a `plmkit.errors.DataError` whose message starts with ``file:line:`` and then
``REASON: detail`` (invalid UTF-8, invalid JSON, not a JSON object, missing field, invalid
Unicode, malformed row, malformed CSV, ...). A reader given ``on_error`` hands it each
row-level error instead of raising (the corpus's ``errors="skip"`` counts them by REASON).

Corpus inputs:

- ``.txt`` (and any unknown suffix): a blank line ends a document; each other line is a
  sentence, or is split into sentences with ``split_sentences=True``.
- ``.jsonl``: one JSON object per line, one document per object; the text is in ``field``
  (a string, whose lines are sentences, or a list of strings).
- ``.json``: one JSON array of such objects (read whole: meant for small files).
- ``.csv`` / ``.tsv``: one document per row, the text in ``column`` (a 0-based index or a
  header name; ``field`` names the header when ``column`` is None).

A corpus without any text is an error. Files are read line by line, so a corpus larger than
memory streams through (except ``.json`` arrays).
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import re
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from plmkit.errors import DataError, UserError

Document = list[str]
"""A document: its sentences, in order."""

ErrorPolicy = Literal["strict", "skip"]
OnError = Callable[[DataError], None]
"""Called with each row-level error instead of raising it (the row is then skipped)."""
Column = str | int
TableFormat = Literal["csv", "tsv", "jsonl", "json"]
FORMATS = ("txt", "jsonl", "json", "csv", "tsv")
_SUFFIX_FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                   ".tsv": "tsv", ".tab": "tsv"}
_MAX_SKIP_EXAMPLES = 5

CorpusError = DataError
"""Errors of corpus files: `plmkit.errors.DataError` (the name is kept for callers)."""


class MissingColumnError(DataError):
    """A column or field the reader was asked for is not in the file (its header or a record)."""


@dataclass
class ReadStats:
    """What one pass over a corpus read and skipped."""

    files: int = 0
    documents: int = 0
    sentences: int = 0
    bytes: int = 0
    """UTF-8 bytes of sentence text yielded (after decompression)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Reason -> number of lines/rows skipped (``errors="skip"``)."""
    examples: list[str] = field(default_factory=list)
    """The first few skipped locations with their messages."""
    empty_files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs: counts, and what was skipped."""
        text = f"{self.files} files, {self.documents} documents, {self.sentences} sentences"
        if self.skipped:
            text += "; skipped " + ", ".join(f"{n} ({why})" for why, n in sorted(self.skipped.items()))
        return text


# ---------------------------------------------------------------------------------------------
# Sentence splitting

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e cf al fig figs no nos vol pp ed eds inc ltd co corp "
    "gen col lt sgt capt gov sen rep rev jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k".split()
)
_TERMINAL = re.compile(r"[.!?。！？]+[\"'”’」』）)\]]*")
_CJK_TERMINAL = re.compile(r"[。！？]")
_NON_SPACE = re.compile(r"\S")
_WORD_WINDOW = 64
"""Characters looked back for the word before a period (abbreviations are far shorter)."""


CJK_CHARS = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002f800-\U0002fa1f]")
"""CJK ideographs (the characters BERT tokenizes one by one)."""


def is_cjk(char: str) -> bool:
    """True for a CJK ideograph."""
    return CJK_CHARS.match(char) is not None


def split_sentences(text: str) -> list[str]:
    """Split text into sentences at ``. ! ?`` (English) and ``。！？`` (Chinese).

    Chinese terminators always end a sentence (closing quotes stay with it). English ones end
    a sentence only before whitespace followed by something other than a lowercase letter (or
    directly before a CJK character), and a period does not end one after a common
    abbreviation (``Mr.``, ``e.g.``) or a single-letter initial (``H. americanus``).
    """
    sentences: list[str] = []
    start = 0
    for match in _TERMINAL.finditer(text):
        end = match.end()
        if _is_boundary(text, match, end):
            piece = text[start:end].strip()
            if piece:
                sentences.append(piece)
            start = end
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def _is_boundary(text: str, match: re.Match[str], end: int) -> bool:
    if _CJK_TERMINAL.search(match.group()):
        return True
    if end >= len(text):
        return False
    if is_cjk(text[end]):
        return True
    if not text[end].isspace():
        return False
    following = _NON_SPACE.search(text, end)  # (searched, not sliced: long lines stay linear)
    if following and following.group().islower():
        return False
    if "!" in match.group() or "?" in match.group():
        return True
    before = text[max(0, match.start() - _WORD_WINDOW): match.start()].rsplit(None, 1)
    word = before[-1].lstrip("(\"'“‘").lower() if before else ""
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return False
    return True


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
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    kind = _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    if kind is None:
        if default is None:
            raise UserError(f"{path}: cannot tell the format from the suffix; give it as one of "
                            "csv, tsv, jsonl, json")
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
    else:
        raise UserError(f"{path}: format {fmt!r} is not a table; use csv, tsv, jsonl or json")


def _json_table(path: str | Path, columns: Sequence[Column], fmt: str,
                on_error: OnError | None) -> Iterator[tuple[int, list[Any]]]:
    report = on_error or _raise
    for number, record in json_records(path, fmt, on_error):
        if not isinstance(record, dict):
            report(DataError(path, number, f"not a JSON object: got {_json_kind(record)}"))
            continue
        missing = [c for c in columns if c not in record]
        if missing:
            fields = ", ".join(map(str, list(record)[:10])) or "none"
            report(MissingColumnError(path, number, f"missing field {missing[0]!r}: fields are {fields}"))
            continue
        yield number, [record[c] for c in columns]


def _json_kind(value: Any) -> str:
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


# ---------------------------------------------------------------------------------------------
# Inputs


def expand_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files named by paths, directories (recursive, known suffixes only) and glob patterns.

    Raises FileNotFoundError for a path that does not exist or a pattern/directory without
    corpus files.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise UserError("no corpus inputs given")
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_corpus_file(p))
            if not found:
                raise FileNotFoundError(f"{path}: directory has no corpus files ({_suffix_list()})")
            files.extend(found)
        elif glob.has_magic(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"{item}: pattern matches no files")
            files.extend(found)
        else:
            raise FileNotFoundError(f"{path}: corpus file not found")
    return list(dict.fromkeys(files))  # drop duplicates, keep order


def _suffix_list() -> str:
    return ", ".join(sorted(_SUFFIX_FORMATS)) + " (optionally .gz)"


def _is_corpus_file(path: Path) -> bool:
    if any(part.startswith(".") for part in path.parts[-1:]):
        return False
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in _SUFFIX_FORMATS


# ---------------------------------------------------------------------------------------------
# The corpus


class Corpus:
    """A lazily read corpus: iterate to get documents; :attr:`stats` describes the last pass.

    Args:
        inputs: files, directories or glob patterns (see the module docstring).
        field: JSON field (``.jsonl``/``.json``), and CSV header name when ``column`` is None.
        column: CSV/TSV column, a 0-based index or a header name.
        header: whether CSV/TSV files start with a header row.
        split_sentences: split lines into sentences (see :func:`split_sentences`).
        errors: ``"strict"`` raises the DataError of the first bad line; ``"skip"`` skips bad
            lines/rows and counts them in ``stats.skipped`` by reason.
        format: force one reader for every file (``"auto"`` decides by suffix).
    """

    def __init__(
        self,
        inputs: str | Path | Sequence[str | Path],
        *,
        field: str = "text",
        column: int | str | None = None,
        header: bool = True,
        split_sentences: bool = False,
        errors: ErrorPolicy = "strict",
        format: str = "auto",
    ) -> None:
        if errors not in ("strict", "skip"):
            raise ValueError(f"errors must be 'strict' or 'skip', got {errors!r}")
        if format != "auto" and format not in FORMATS:
            raise ValueError(f"format must be 'auto' or one of {', '.join(FORMATS)}, got {format!r}")
        self.files = expand_inputs(inputs)
        self.field = field
        self.column = column
        self.header = header
        self.split = split_sentences
        self.errors: ErrorPolicy = errors
        self.format = format
        self.stats = ReadStats()

    def __iter__(self) -> Iterator[Document]:
        self.stats = ReadStats()
        for path in self.files:
            self.stats.files += 1
            before = self.stats.documents
            for doc in self._read_file(path):
                self.stats.documents += 1
                self.stats.sentences += len(doc)
                self.stats.bytes += sum(len(s.encode("utf-8")) for s in doc)
                yield doc
            if self.stats.documents == before:
                self.stats.empty_files.append(str(path))
        if self.stats.documents == 0:
            where = self.files[0] if len(self.files) == 1 else f"{len(self.files)} files"
            detail = f" ({self.stats.summary()})" if self.stats.skipped else ""
            raise DataError(where, None, f"empty corpus, no text found{detail}")

    def _read_file(self, path: Path) -> Iterator[Document]:
        kind = detect_format(path, default="txt") if self.format == "auto" else self.format
        if kind == "txt":
            return self._read_txt(path)
        if kind in ("jsonl", "json"):
            return self._read_json(path, kind)
        return self._read_table(path, kind)

    def _bad(self, error: DataError) -> None:
        """Raise, or count a skipped line, per the error policy."""
        if self.errors == "strict":
            raise error
        reason = error.reason.partition(": ")[0]
        self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
        if len(self.stats.examples) < _MAX_SKIP_EXAMPLES:
            self.stats.examples.append(str(error))

    def _sentences(self, text: str) -> list[str]:
        out: list[str] = []
        for line in text.split("\n"):
            line = line.strip()
            if line:
                out.extend(split_sentences(line) if self.split else [line])
        return out

    def _read_txt(self, path: Path) -> Iterator[Document]:
        doc: Document = []
        for _, line in text_lines(path, self._bad):
            if line.strip():
                doc.extend(self._sentences(line))
            elif doc:
                yield doc
                doc = []
        if doc:
            yield doc

    def _read_json(self, path: Path, kind: str) -> Iterator[Document]:
        for number, (value,) in read_table(path, [self.field], fmt=kind, on_error=self._bad):
            texts = [value] if isinstance(value, str) else value
            if not isinstance(texts, list) or not all(isinstance(v, str) for v in texts):
                self._bad(DataError(path, number, f"field {self.field!r} is not text: got {_json_kind(value)}"))
                continue
            doc = [s for v in texts for s in self._sentences(v)]
            if doc:
                yield doc

    def _read_table(self, path: Path, kind: str) -> Iterator[Document]:
        if not self.header and not isinstance(self.column, int):
            raise UserError(f"{path}: a column given by name needs a header row; give an index")
        column = self.column if self.column is not None else self.field
        for _, (text,) in read_table(path, [column], fmt=kind, header=self.header, on_error=self._bad):
            doc = self._sentences(text)
            if doc:
                yield doc


def read_documents(inputs: str | Path | Sequence[str | Path], **options: Any) -> Iterator[Document]:
    """Documents of a corpus, lazily (options as for :class:`Corpus`)."""
    return iter(Corpus(inputs, **options))


csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
