"""Streaming corpus readers: text files in, documents (lists of sentences) out.

Supported inputs (each optionally gzip-compressed, ``name.ext.gz``), given as files,
directories (searched recursively for the suffixes below) or glob patterns:

- ``.txt`` (and any unknown suffix): a blank line ends a document; each other line is a
  sentence, or is split into sentences with ``split_sentences=True``.
- ``.jsonl``: one JSON object per line, one document per object; the text is in ``field``
  (a string, whose lines are sentences, or a list of strings).
- ``.json``: one JSON array of such objects (read whole: meant for small files).
- ``.csv`` / ``.tsv``: one document per row, the text in ``column`` (a 0-based index or a
  header name; ``field`` names the header when ``column`` is None).

Encoding policy: UTF-8, a leading byte-order mark is tolerated. Undecodable bytes, malformed
JSON and short rows raise :class:`CorpusError` naming ``file:line`` (``errors="strict"``, the
default) or are skipped and counted in :attr:`Corpus.stats` (``errors="skip"``). A corpus
without any text is an error. Files are read line by line, so a corpus larger than memory
streams through (except ``.json`` arrays).
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import re
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from plmkit.errors import UserError

Document = list[str]
"""A document: its sentences, in order."""

ErrorPolicy = Literal["strict", "skip"]
FORMATS = ("txt", "jsonl", "json", "csv", "tsv")
_KNOWN_SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
_MAX_SKIP_EXAMPLES = 5


class CorpusError(UserError):
    """A corpus file cannot be read as promised; the message starts with ``file:line:``."""


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
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_TERMINAL = re.compile(r"[.!?。！？]+[\"'”’」』）)\]]*")
_CJK_TERMINAL = re.compile(r"[。！？]")


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
    following = text[end:].lstrip()
    if following and following[0].islower():
        return False
    if "!" in match.group() or "?" in match.group():
        return True
    before = text[: match.start()].rsplit(None, 1)
    word = before[-1].lstrip("(\"'“‘").lower() if before else ""
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Inputs


def expand_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files named by paths, directories (recursive, known suffixes only) and glob patterns.

    Raises FileNotFoundError for a path that does not exist or a pattern/directory without
    corpus files.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise CorpusError("no corpus inputs given")
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
    return ", ".join(sorted(_KNOWN_SUFFIXES)) + " (optionally .gz)"


def _is_corpus_file(path: Path) -> bool:
    if any(part.startswith(".") for part in path.parts[-1:]):
        return False
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in _KNOWN_SUFFIXES


def detect_format(path: Path) -> str:
    """The reader for a file from its suffix (``.gz`` looked through); unknown means text."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return _KNOWN_SUFFIXES.get(suffixes[-1], "txt") if suffixes else "txt"


# ---------------------------------------------------------------------------------------------
# The reader


class Corpus:
    """A lazily read corpus: iterate to get documents; :attr:`stats` describes the last pass.

    Args:
        inputs: files, directories or glob patterns (see the module docstring).
        field: JSON field (``.jsonl``/``.json``), and CSV header name when ``column`` is None.
        column: CSV/TSV column, a 0-based index or a header name.
        header: whether CSV/TSV files start with a header row.
        split_sentences: split lines into sentences (see :func:`split_sentences`).
        errors: ``"strict"`` raises :class:`CorpusError` at the first bad line; ``"skip"``
            skips bad lines/rows and counts them in ``stats.skipped``.
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
            raise CorpusError(f"{where}: empty corpus, no text found{detail}")

    def _read_file(self, path: Path) -> Iterator[Document]:
        kind = detect_format(path) if self.format == "auto" else self.format
        readers = {"txt": self._read_txt, "jsonl": self._read_jsonl, "json": self._read_json}
        if kind in readers:
            return readers[kind](path)
        return self._read_table(path, "\t" if kind == "tsv" else ",")

    # -- error policy ---------------------------------------------------------------------------

    def _bad(self, where: str, reason: str, detail: str) -> None:
        """Raise, or count a skipped line, per the error policy."""
        message = f"{where}: {reason}{': ' + detail if detail else ''}"
        if self.errors == "strict":
            raise CorpusError(message)
        self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
        if len(self.stats.examples) < _MAX_SKIP_EXAMPLES:
            self.stats.examples.append(message)

    def _lines(self, path: Path) -> Iterator[tuple[int, str]]:
        """(line number, decoded line without its newline); undecodable lines per policy."""
        for number, raw in _raw_lines(path):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                hint = " (the file looks like UTF-16)" if number == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
                self._bad(
                    f"{path}:{number}",
                    "invalid UTF-8",
                    f"byte 0x{raw[e.start]:02x} at column {e.start + 1}{hint}; re-encode the file "
                    "as UTF-8 or use errors='skip'",
                )

    def _sentences(self, text: str) -> list[str]:
        out: list[str] = []
        for line in text.split("\n"):
            line = line.strip()
            if line:
                out.extend(split_sentences(line) if self.split else [line])
        return out

    # -- formats --------------------------------------------------------------------------------

    def _read_txt(self, path: Path) -> Iterator[Document]:
        doc: Document = []
        for _, line in self._lines(path):
            if line.strip():
                doc.extend(self._sentences(line))
            elif doc:
                yield doc
                doc = []
        if doc:
            yield doc

    def _read_jsonl(self, path: Path) -> Iterator[Document]:
        for number, line in self._lines(path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                self._bad(f"{path}:{number}", "invalid JSON", f"{e.msg} at column {e.colno}")
                continue
            doc = self._record_text(record, f"{path}:{number}")
            if doc:
                yield doc

    def _read_json(self, path: Path) -> Iterator[Document]:
        text = "\n".join(line for _, line in self._lines(path))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{e.lineno}: invalid JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(data, list):
            raise CorpusError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
        for index, record in enumerate(data):
            doc = self._record_text(record, f"{path}: item {index}")
            if doc:
                yield doc

    def _record_text(self, record: Any, where: str) -> Document:
        if not isinstance(record, dict):
            self._bad(where, "not a JSON object", f"got {type(record).__name__}")
            return []
        if self.field not in record:
            keys = ", ".join(map(str, list(record)[:10]))
            self._bad(where, f"missing field {self.field!r}", f"keys are {keys}")
            return []
        value = record[self.field]
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not all(isinstance(v, str) for v in texts):
            self._bad(where, f"field {self.field!r} is not text", f"got {type(value).__name__}")
            return []
        if any(_LONE_SURROGATE.search(v) for v in texts):
            self._bad(where, "invalid Unicode", f"field {self.field!r} has a lone surrogate (\\ud800-\\udfff) escape")
            return []
        return [s for v in texts for s in self._sentences(v)]

    def _read_table(self, path: Path, delimiter: str) -> Iterator[Document]:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        numbered = self._lines(path)
        line_of: list[int] = [0]

        def lines() -> Iterator[str]:
            for number, line in numbered:
                line_of[0] = number
                yield line + "\n"  # keeps newlines inside quoted fields

        reader = csv.reader(lines(), delimiter=delimiter, quoting=quoting)
        if not self.header and not isinstance(self.column, int):
            raise CorpusError(f"{path}: a column given by name needs a header row; give an index")
        try:
            index = self.column if isinstance(self.column, int) else -1
            if self.header:
                first = next(reader, None)
                if first is None:
                    return
                index = index if index >= 0 else self._column_index(first, path)
            for row in reader:
                if not row or row == [""]:
                    continue
                if index >= len(row):
                    self._bad(f"{path}:{line_of[0]}", "short row", f"{len(row)} columns, column {index} needed")
                    continue
                doc = self._sentences(row[index])
                if doc:
                    yield doc
        except csv.Error as e:
            raise CorpusError(f"{path}:{line_of[0]}: malformed CSV: {e}") from None

    def _column_index(self, header: list[str], path: Path) -> int:
        name = self.column if isinstance(self.column, str) else self.field
        if name not in header:
            raise CorpusError(f"{path}:1: no column {name!r} in the header (columns: {', '.join(header)})")
        return header.index(name)


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines (split on b"\\n" only, so U+2028 inside text is kept)."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                yield number, raw.rstrip(b"\r\n")
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise CorpusError(f"{path}: corrupt gzip file: {e}") from None


def read_documents(inputs: str | Path | Sequence[str | Path], **options: Any) -> Iterator[Document]:
    """Documents of a corpus, lazily (options as for :class:`Corpus`)."""
    return iter(Corpus(inputs, **options))


def iter_texts(docs: Iterable[Document]) -> Iterator[str]:
    """Each document as one text (sentences joined by newlines), e.g. to train a tokenizer."""
    for doc in docs:
        yield "\n".join(doc)


csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
