"""Corpora: the documents (lists of sentences) of files, directories and glob patterns.

Pretraining data (`plmkit prepare`), tokenizer training and language-model fine-tuning read
their text through `Corpus`, on the readers of `plmkit.data.io` (one encoding policy, one error
type: `plmkit.errors.DataError` naming ``file:line``).

Corpus inputs:

- ``.txt`` (and any unknown suffix): a blank line ends a document; each other line is a
  sentence, or is split into sentences with ``split_sentences=True``.
- ``.jsonl``: one JSON object per line, one document per object; the text is in ``field``
  (a string, whose lines are sentences, or a list of strings).
- ``.json``: one JSON array of such objects (read whole: meant for small files).
- ``.csv`` / ``.tsv`` / ``.parquet`` / datasets folders: one document per row, the text in
  ``column`` (a 0-based index or a header name; ``field`` names the header when ``column`` is None).
- With neither ``field`` nor ``column``, the text column is found by its name (`TEXT_COLUMNS`).

A corpus without any text is an error. Files are read line by line, so a corpus larger than
memory streams through (except ``.json`` arrays).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from plmkit.data.io import (
    SUFFIX_FORMATS, FORMATS, TEXT_COLUMNS, MissingColumnError, json_kind, detect_format, find_column,
    is_dataset_folder, read_table, split_sentences, table_columns, text_lines,
)
from plmkit.errors import DataError, UserError

Document = list[str]
"""A document: its sentences, in order."""

ErrorPolicy = Literal["strict", "skip"]
_MAX_SKIP_EXAMPLES = 5

CorpusError = DataError
"""Errors of corpus files: `plmkit.errors.DataError` (the name is kept for callers)."""


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
        if path.is_file() or is_dataset_folder(path):
            files.append(path)
        elif path.is_dir():
            datasets = sorted(p for p in path.rglob("*") if is_dataset_folder(p))
            found = sorted([*datasets, *(p for p in path.rglob("*") if p.is_file() and _is_corpus_file(p)
                                         and not any(d in p.parents for d in datasets))])
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
    return ", ".join(sorted(SUFFIX_FORMATS)) + " (optionally .gz), datasets folders"


def _is_corpus_file(path: Path) -> bool:
    if any(part.startswith(".") for part in path.parts[-1:]):
        return False
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in SUFFIX_FORMATS


# ---------------------------------------------------------------------------------------------
# The corpus


class Corpus:
    """A lazily read corpus: iterate to get documents; :attr:`stats` describes the last pass.

    Args:
        inputs: files, directories or glob patterns (see the module docstring).
        field: JSON field (``.jsonl``/``.json``), and CSV header name when ``column`` is None;
            None (and no ``column``) = found by its name in each file (`TEXT_COLUMNS`).
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
        field: str | None = None,
        column: int | str | None = None,
        header: bool = True,
        split_sentences: bool = False,
        errors: ErrorPolicy = "strict",
        format: str = "auto",
    ) -> None:
        if errors not in ("strict", "skip"):
            raise ValueError(f"errors must be 'strict' or 'skip', got {errors!r}")
        if format != "auto" and format not in FORMATS:
            raise ValueError(f"format must be auto or one of {', '.join(FORMATS)}, got {format!r}")
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
            return self._read_json(path, kind, self.field or self._text_column(path, kind))
        return self._read_table(path, kind)

    def _text_column(self, path: Path, kind: str) -> str:
        """The text column of a file when none was given: found by its name."""
        names = table_columns(path, kind, self.header)
        if names is None and kind in ("jsonl", "json"):
            return TEXT_COLUMNS[0]  # no record to look at: the file is empty
        found = find_column(path, names, TEXT_COLUMNS, "text", "--text-column")
        if found is None:
            raise MissingColumnError(path, 1, f"no text column among {', '.join(names or [])}; name it with "
                                              f"--text-column (looked for {', '.join(TEXT_COLUMNS)})")
        return found

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

    def _read_json(self, path: Path, kind: str, name: str) -> Iterator[Document]:
        for number, (value,) in read_table(path, [name], fmt=kind, on_error=self._bad):
            texts = [value] if isinstance(value, str) else value
            if not isinstance(texts, list) or not all(isinstance(v, str) for v in texts):
                self._bad(DataError(path, number, f"field {name!r} is not text: got {json_kind(value)}"))
                continue
            doc = [s for v in texts for s in self._sentences(v)]
            if doc:
                yield doc

    def _read_table(self, path: Path, kind: str) -> Iterator[Document]:
        if not self.header and not isinstance(self.column, int):
            raise UserError(f"{path}: a column given by name needs a header row; give an index")
        column = self.column if self.column is not None else (self.field or self._text_column(path, kind))
        for number, (text,) in read_table(path, [column], fmt=kind, header=self.header, on_error=self._bad):
            if not isinstance(text, str):
                self._bad(DataError(path, number, f"column {column!r} is not text: got {json_kind(text)}"))
                continue
            doc = self._sentences(text)
            if doc:
                yield doc


def read_documents(inputs: str | Path | Sequence[str | Path], **options: Any) -> Iterator[Document]:
    """Documents of a corpus, lazily (options as for :class:`Corpus`)."""
    return iter(Corpus(inputs, **options))


__all__ = ["Corpus", "CorpusError", "Document", "ErrorPolicy", "ReadStats", "expand_inputs", "read_documents"]
