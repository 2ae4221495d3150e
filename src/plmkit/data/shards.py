"""Token shards: a corpus tokenized once into memory-mapped arrays (``plmkit prepare``).

Layout of a shard folder::

    meta.json            format, tokenizer fingerprint and special ids, dtype, counts, sources
    tokenizer/           the tokenizer files (so the folder is self-contained)
    train/ eval/         one folder per split (eval holds the held-out documents), each with
      tokens.bin         (N,) token ids, uint16 when the vocabulary fits, else uint32
      word_start.bin     (N,) uint8, 1 where a token starts a whole word (for whole-word masking)
      sentences.bin      (S + 1,) int64 token offsets of the sentences
      documents.bin      (D + 1,) int64 sentence offsets of the documents

Documents are tokenized sentence by sentence without special tokens, in parallel worker
processes (each uses the `tokenizers` batch API). Sentences after the first of a document are
encoded with a leading ``joiner`` (a space) so byte-level BPE sees the text as it would read.

Whole words: a token starts a word when the pre-tokenizer starts a new word there. For Chinese
(CJK ideographs), which pre-tokenizers split into single characters (WordPiece) or lump into runs
(byte-level BPE), words come from the `jieba` segmenter when it is installed; without it, each
CJK character counts as a word (and ``meta.json`` records ``"segmenter": "cjk-chars"``).

A build is written to a temporary folder and renamed into place, and it is reused when the
same inputs (paths, sizes, mtimes), tokenizer and options are asked for again. The output folder
is claimed and locked through `plmkit.outputs`: a folder holding anything plmkit did not write
(the corpus, say) is never replaced, and two builds of one folder do not run at once.

Text is handed to the tokenizer in pieces of at most ``_PIECE_CHARS`` characters, cut at
whitespace, so a single huge line costs memory in proportion to the line, not to the tokenizer's
working set for it. Opening a split checks the file sizes, the offsets and the tokenizer beside
the shards against what meta.json recorded (`IntegrityError` naming the file otherwise).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from itertools import chain
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from plmkit.cli_args import add_deprecated, add_output, add_text_column, column_value
from plmkit.data.io import CJK_CHARS, Corpus, Document, ErrorPolicy
from plmkit.data.shard_set import (FORMAT, SPECIAL_ROLES, VERSION, ShardSet, SpecialIds, tokenizer_fingerprint,
                                   unigram_baseline)
from plmkit.data.tokenizer import Tokenizer, bounded_pieces, vocabulary_digest
from plmkit.errors import IntegrityError, UserError
from plmkit.files import no_space_as_error
from plmkit.outputs import SHARDS, claim_output

SPLITS = ("train", "eval")
_CHUNK_BYTES = 1 << 20  # text per worker task
_CHUNK_DOCS = 4096
_PIECE_CHARS = 1 << 16  # longest text handed to the tokenizer at once (cut at whitespace)
_BATCH_CHARS = 1 << 20  # text per encode_batch call


# ---------------------------------------------------------------------------------------------
# Encoding (runs in worker processes)


def segmenter_name() -> str:
    """Which Chinese word segmenter whole-word flags use: "jieba" or "cjk-chars"."""
    try:
        import jieba  # noqa: F401
    except ImportError:
        return "cjk-chars"
    return "jieba"


@dataclass
class _Chunk:
    """Tokens of consecutive documents; sentences and documents as lengths."""

    tokens: np.ndarray  # (N,) uint16 (vocabulary up to 65536) or uint32
    word_start: np.ndarray  # (N,) uint8
    sentence_lengths: np.ndarray  # (S,) int64, all > 0
    document_sentences: np.ndarray  # (D,) int64, may be 0 (document had no tokens)
    text_bytes: int


class _Encoder:
    """Encodes documents with a tokenizer and marks whole-word starts."""

    def __init__(self, tokenizer: Tokenizer, joiner: str) -> None:
        self.backend = tokenizer.backend
        self.joiner = joiner
        self._jieba: Any = None
        self._segmenter = segmenter_name()

    def encode(self, docs: Sequence[Document]) -> _Chunk:
        sentences = [s if j == 0 else self.joiner + s for doc in docs for j, s in enumerate(doc)]
        pieces = ((i, piece) for i, text in enumerate(sentences) for piece in bounded_pieces(text, _PIECE_CHARS))
        ids, starts, owner, piece_lengths = self._encode_pieces(pieces)
        lengths = np.bincount(owner, weights=piece_lengths, minlength=len(sentences)).astype(np.int64)
        bounds = np.cumsum([0] + [len(d) for d in docs])
        kept = np.concatenate([[0], np.cumsum(lengths > 0)])
        return _Chunk(
            tokens=ids,
            word_start=starts,
            sentence_lengths=lengths[lengths > 0],
            document_sentences=(kept[bounds[1:]] - kept[bounds[:-1]]).astype(np.int64),
            text_bytes=sum(len(t) if t.isascii() else len(t.encode("utf-8")) for t in sentences),
        )

    def _encode_pieces(self, pieces: Iterator[tuple[int, str]]) -> tuple[np.ndarray, ...]:
        """(ids (N,), word starts (N,) uint8, sentence of each piece (P,), tokens per piece (P,)) of
        (sentence, text piece) pairs, encoded in batches of about _BATCH_CHARS characters so that
        the tokenizer's per-token objects stay bounded. Ids are uint16 when the vocabulary fits."""
        dtype = np.uint16 if self.backend.get_vocab_size(with_added_tokens=True) <= 1 << 16 else np.uint32
        ids, starts, owners, lengths = [], [], [], []
        batch: list[str] = []
        size = 0
        for owner, piece in chain(pieces, [(-1, None)]):
            if batch and (piece is None or size + len(piece) > _BATCH_CHARS):
                encodings = self.backend.encode_batch(batch, add_special_tokens=False)
                n = np.asarray([len(e.ids) for e in encodings], dtype=np.int64)
                ids.append(np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=dtype, count=int(n.sum())))
                starts.append(self._word_starts(batch, encodings, n))
                lengths.append(n)
                batch, size = [], 0
            if piece is not None:
                batch.append(piece)
                owners.append(owner)
                size += len(piece)
        if not lengths:
            return np.zeros(0, dtype), np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
        ids_all = np.concatenate(ids) if len(ids) > 1 else ids[0]
        del ids
        return ids_all, np.concatenate(starts), np.asarray(owners, dtype=np.int64), np.concatenate(lengths)

    def _word_starts(self, texts: list[str], encodings: list[Any], lengths: np.ndarray) -> np.ndarray:
        """(N,) uint8 over all tokens: 1 where a token begins a word, i.e. the pre-tokenizer's word
        changes, or (for a token starting with a CJK ideograph) a segmenter word begins there.
        The first token of each text counts as a word start (pieces of a long text are cut at
        whitespace)."""
        total = int(lengths.sum())
        word_ids = (-1 if w is None else w for e in encodings for w in e.word_ids)
        words = np.fromiter(word_ids, dtype=np.int64, count=total)
        first = np.zeros(total, dtype=bool)
        first[(np.cumsum(lengths) - lengths)[lengths > 0]] = True  # first token of each sentence
        starts = first.copy()
        starts[1:] |= words[1:] != words[:-1]
        with_cjk = [i for i, t in enumerate(texts) if CJK_CHARS.search(t)]
        if not with_cjk:
            return starts.astype(np.uint8)
        base = np.cumsum([0] + [len(t) for t in texts])
        codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)  # (C,) code points
        spans = np.fromiter(chain.from_iterable(chain.from_iterable(e.offsets) for e in encodings), dtype=np.int64,
                            count=2 * total).reshape(-1, 2) + np.repeat(base[:-1], lengths)[:, None]
        solid = np.append(np.flatnonzero(~_is_space(codes)), len(codes))
        anchor = solid[np.searchsorted(solid, spans[:, 0])]  # first non-space character of each token
        anchor = np.where(anchor < spans[:, 1], anchor, -1)
        cjk = (anchor >= 0) & _is_cjk_code(codes)[np.maximum(anchor, 0)]
        prev_anchor = np.append(-1, anchor[:-1])
        merged = np.append(False, (anchor[:-1] < 0) & (words[1:] == words[:-1])) & ~first  # "Ġ" + CJK bytes
        segment_starts = self._cjk_word_starts(texts, with_cjk, base)
        cjk_starts = segment_starts[np.maximum(anchor, 0)] & (anchor != prev_anchor) & ~merged
        return (np.where(cjk, cjk_starts, starts) | first).astype(np.uint8)

    def _cjk_word_starts(self, texts: list[str], which: list[int], base: np.ndarray) -> np.ndarray:
        """(C,) bool over the characters of all texts: True where a segmenter word begins
        (in texts ``which``; every character with the "cjk-chars" fallback)."""
        if self._segmenter == "cjk-chars":
            return np.ones(int(base[-1]), dtype=bool)
        if self._jieba is None:
            import logging

            import jieba

            jieba.setLogLevel(logging.WARNING)
            self._jieba = jieba
        flags = np.zeros(int(base[-1]), dtype=bool)
        for i in which:
            position = int(base[i])
            for word in self._jieba.cut(texts[i], HMM=False):  # dictionary words only: about twice as fast
                flags[position] = True
                position += len(word)
        return flags


def _is_space(codes: np.ndarray) -> np.ndarray:
    """(n,) bool: which code points are whitespace (as str.isspace)."""
    return ((codes >= 9) & (codes <= 13)) | ((codes >= 0x1C) & (codes <= 0x20)) | np.isin(codes, _SPACES) | (
        (codes >= 0x2000) & (codes <= 0x200A))


def _is_cjk_code(codes: np.ndarray) -> np.ndarray:
    """(n,) bool: which code points are CJK ideographs (as io.CJK_CHARS)."""
    return (((codes >= 0x4E00) & (codes <= 0x9FFF)) | ((codes >= 0x3400) & (codes <= 0x4DBF))
            | ((codes >= 0xF900) & (codes <= 0xFAFF)) | ((codes >= 0x20000) & (codes <= 0x2A6DF))
            | ((codes >= 0x2F800) & (codes <= 0x2FA1F)))


_SPACES = np.asarray([0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000], dtype=np.uint32)
_WORKER: _Encoder | None = None


def _init_worker(tokenizer_path: str, joiner: str) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _WORKER = _Encoder(Tokenizer.load(tokenizer_path), joiner)


def _encode_in_worker(docs: list[Document]) -> _Chunk:
    if _WORKER is None:
        raise RuntimeError("worker not initialized")
    return _WORKER.encode(docs)


# ---------------------------------------------------------------------------------------------
# Writing


class _SplitWriter:
    """Appends documents to one split's files."""

    def __init__(self, folder: Path, dtype: np.dtype) -> None:
        folder.mkdir(parents=True)
        self.dtype = dtype
        names = ("tokens", "word_start", "sentences", "documents")
        self.files = {name: open(folder / f"{name}.bin", "wb") for name in names}
        self.tokens = self.sentences = self.documents = 0
        self.files["sentences"].write(np.zeros(1, np.int64).tobytes())
        self.files["documents"].write(np.zeros(1, np.int64).tobytes())

    def write(self, chunk: _Chunk, docs: np.ndarray) -> None:
        """Append the chunk's documents at indices ``docs`` (ascending), run by run of consecutive
        documents: slices of the chunk, no per-token index arrays (a huge document stays cheap)."""
        sent_bounds = np.concatenate([[0], np.cumsum(chunk.document_sentences)])
        tok_bounds = np.concatenate([[0], np.cumsum(chunk.sentence_lengths)])
        for run in np.split(docs, np.flatnonzero(np.diff(docs) != 1) + 1) if len(docs) else []:
            d0, d1 = int(run[0]), int(run[-1]) + 1
            s0, s1 = int(sent_bounds[d0]), int(sent_bounds[d1])
            t0, t1 = int(tok_bounds[s0]), int(tok_bounds[s1])
            chunk.tokens[t0:t1].astype(self.dtype, copy=False).tofile(self.files["tokens"])
            chunk.word_start[t0:t1].tofile(self.files["word_start"])
            lengths = chunk.sentence_lengths[s0:s1]
            self.files["sentences"].write((self.tokens + np.cumsum(lengths)).astype(np.int64).tobytes())
            self.files["documents"].write(
                (self.sentences + np.cumsum(chunk.document_sentences[d0:d1])).astype(np.int64).tobytes())
            self.tokens += t1 - t0
            self.sentences += s1 - s0
            self.documents += d1 - d0

    def close(self) -> dict[str, int]:
        for f in self.files.values():
            f.close()
        return {"documents": self.documents, "sentences": self.sentences, "tokens": self.tokens}


def _held_out(doc_indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """(D,) bool: a fixed pseudo-random choice of documents by index (splitmix64 hash)."""
    if fraction <= 0:
        return np.zeros(len(doc_indices), dtype=bool)
    with np.errstate(over="ignore"):
        z = doc_indices.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


# ---------------------------------------------------------------------------------------------
# prepare


def _chunks(corpus: Corpus) -> Iterator[list[Document]]:
    batch: list[Document] = []
    size = 0
    for doc in corpus:
        batch.append(doc)
        size += sum(len(s) for s in doc)
        if size >= _CHUNK_BYTES or len(batch) >= _CHUNK_DOCS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encoded(corpus: Corpus, tokenizer: Tokenizer, tokenizer_path: str, joiner: str, workers: int) -> Iterator[_Chunk]:
    """Encoded chunks in corpus order; with workers > 1, at most 2 * workers chunks in flight."""
    if workers <= 1:
        encoder = _Encoder(tokenizer, joiner)
        yield from (encoder.encode(docs) for docs in _chunks(corpus))
        return
    # fork is cheap (no re-import of torch); tokenizers turns its own thread pool off in forked
    # children, and workers do not touch torch. Elsewhere, spawn.
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                initargs=(tokenizer_path, joiner)) as pool:
        pending: deque[cf.Future[_Chunk]] = deque()
        for docs in _chunks(corpus):
            pending.append(pool.submit(_encode_in_worker, docs))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _sources(files: Sequence[Path]) -> list[dict[str, Any]]:
    """Path, size and modification time of each input (a datasets folder: of the files in it)."""
    out = []
    for f in files:
        stats = [p.stat() for p in sorted(f.rglob("*")) if p.is_file()] if f.is_dir() else [f.stat()]
        out.append({"path": str(f.resolve()), "size": sum(st.st_size for st in stats),
                    "mtime": max((st.st_mtime_ns for st in stats), default=0)})
    return out


def prepare(
    inputs: str | Path | Sequence[str | Path],
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    field: str | None = None,
    column: int | str | None = None,
    header: bool = True,
    split_sentences: bool = False,
    errors: ErrorPolicy = "strict",
    holdout: float = 0.01,
    seed: int = 0,
    workers: int | None = None,
    joiner: str = " ",
    dtype: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Tokenize a corpus into a shard folder (see the module docstring) and return its path.

    Args:
        inputs, field, column, header, split_sentences, errors: as for :class:`plmkit.data.io.Corpus`.
        tokenizer_dir: anything :meth:`Tokenizer.load` accepts (folder or vocab file).
        holdout: fraction of documents put in the ``eval`` split (a fixed choice given ``seed``).
        workers: tokenizer processes; default min(8, CPUs), and 1 for inputs under 2 MiB.
        joiner: text put before each sentence after the first of a document.
        dtype: "auto" (uint16 when every id fits), "uint16" or "uint32".
        overwrite: rebuild when ``out_dir`` holds shards of other inputs; without it that is an error.

    A folder built from the same inputs, tokenizer and options is reused (a message says so).
    """
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    out = Path(out_dir)
    corpus = Corpus(inputs, field=field, column=column, header=header, split_sentences=split_sentences, errors=errors)
    tokenizer = Tokenizer.load(tokenizer_dir)
    token_dtype = _choose_dtype(dtype, tokenizer.vocab_size)
    options = {"field": field if field is not None else "text", "column": column, "header": header,
               "split_sentences": split_sentences,
               "errors": errors, "holdout": holdout, "seed": seed, "joiner": joiner,
               "dtype": token_dtype.name, "segmenter": segmenter_name()}
    build = {"sources": _sources(corpus.files), "tokenizer": tokenizer_fingerprint(tokenizer), "options": options}
    build_key = hashlib.sha256(json.dumps(build, sort_keys=True).encode()).hexdigest()
    if _reusable(out, build, build_key, overwrite):
        _say(progress, f"{out}: shards are up to date (same inputs, tokenizer and options); reusing them")
        return out
    total = sum(s["size"] for s in build["sources"])
    if workers is None:
        workers = 1 if total < 2 * _CHUNK_BYTES else min(8, os.cpu_count() or 1)
    inputs = [*corpus.files, Path(tokenizer_dir)]
    with claim_output(out, SHARDS, inputs=inputs, replace=True) as claim, \
            no_space_as_error(out, "the shards were not written (an earlier build there is unchanged)"):
        tmp = claim.temp_dir()
        try:
            counts = _write_splits(corpus, tokenizer, str(tokenizer_dir), tmp, token_dtype, options, workers, total,
                                   progress)
            tokenizer.save(tmp / "tokenizer")
            meta = _meta(tokenizer, build, build_key, token_dtype, counts, corpus)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            claim.publish(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _say(progress, _summary(out, counts, corpus))
    return out


def _choose_dtype(dtype: str, vocab_size: int) -> np.dtype:
    if dtype == "auto":
        return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    if dtype not in ("uint16", "uint32"):
        raise ValueError(f"dtype must be 'auto', 'uint16' or 'uint32', got {dtype!r}")
    if dtype == "uint16" and vocab_size > 1 << 16:
        raise ValueError(f"dtype uint16 cannot hold ids of a vocabulary of {vocab_size}")
    return np.dtype(dtype)


def _reusable(out: Path, build: dict[str, Any], build_key: str, overwrite: bool) -> bool:
    """True when ``out`` already holds this build, intact; an error when it holds another build (unless
    overwrite). Whether any other folder may be written is `plmkit.outputs.claim_output`'s call."""
    meta_path = out / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        old = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        return False
    if old.get("build_key") == build_key:
        try:
            for split in old.get("splits", {}):
                ShardSet.open(out, split)
        except IntegrityError as e:
            _say(True, f"{out}: rebuilding: {e}")
            return False
        return True
    if overwrite:
        return False
    differs = [k for k in ("sources", "tokenizer", "options") if old.get("build", {}).get(k) != build[k]]
    raise UserError(f"{out}: holds shards built from other {', '.join(differs) or 'settings'}; "
                    "use overwrite=True (--overwrite) to rebuild")


def _write_splits(corpus: Corpus, tokenizer: Tokenizer, tokenizer_path: str, tmp: Path, dtype: np.dtype,
                  options: dict[str, Any], workers: int, total: int, progress: bool) -> dict[str, dict[str, int]]:
    unsized = any(f.suffix.lower() in (".gz", ".parquet", ".arrow") or f.is_dir() for f in corpus.files)  # binary
    writers = {name: _SplitWriter(tmp / name, dtype) for name in SPLITS}
    bar = tqdm(total=None if unsized else total, unit="B", unit_scale=True, desc="tokenizing", disable=not progress)
    next_doc = 0
    try:
        with bar:
            for chunk in _encoded(corpus, tokenizer, tokenizer_path, options["joiner"], workers):
                n = len(chunk.document_sentences)
                non_empty = chunk.document_sentences > 0
                held = _held_out(np.arange(next_doc, next_doc + n), options["holdout"], options["seed"])
                writers["train"].write(chunk, np.flatnonzero(non_empty & ~held))
                writers["eval"].write(chunk, np.flatnonzero(non_empty & held))
                next_doc += n
                bar.update(chunk.text_bytes)
            if bar.total:
                bar.update(max(0, bar.total - bar.n))
    finally:
        counts = {name: w.close() for name, w in writers.items()}
    return counts


def _meta(tokenizer: Tokenizer, build: dict[str, Any], build_key: str, dtype: np.dtype,
          counts: dict[str, dict[str, int]], corpus: Corpus) -> dict[str, Any]:
    specials = {role: getattr(tokenizer, f"{role}_id") for role in SPECIAL_ROLES}
    return {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype.name,
        "tokenizer": {"fingerprint": build["tokenizer"], "vocabulary": vocabulary_digest(tokenizer),
                      "kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "special_ids": specials},
        "splits": counts,
        "read": {"files": corpus.stats.files, "documents": corpus.stats.documents,
                 "sentences": corpus.stats.sentences, "bytes": corpus.stats.bytes,
                 "skipped": corpus.stats.skipped, "skipped_examples": corpus.stats.examples,
                 "empty_files": corpus.stats.empty_files},
        "build": build,
        "build_key": build_key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _summary(out: Path, counts: dict[str, dict[str, int]], corpus: Corpus) -> str:
    parts = [f"{name}: {c['documents']} documents, {c['sentences']} sentences, {c['tokens']} tokens"
             for name, c in counts.items() if c["documents"] or name == "train"]
    text = f"{out}: " + "; ".join(parts)
    if corpus.stats.skipped:
        text += "\n  skipped: " + ", ".join(f"{n} ({why})" for why, n in sorted(corpus.stats.skipped.items()))
        text += "".join(f"\n    {e}" for e in corpus.stats.examples)
    return text


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# CLI: plmkit prepare


def cli_configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="corpus files, folders or glob patterns (.txt .jsonl .json .csv .tsv .parquet, .gz; "
                             "Hugging Face datasets folders)")
    parser.add_argument("--tokenizer", required=True,
                        help="tokenizer folder or vocab file (or a model folder / training run: its tokenizer)")
    add_output(parser, "shard folder to write: new, empty, or one prepare wrote")
    add_text_column(parser)
    add_deprecated(parser, "--field", "--text-column", default=None)
    add_deprecated(parser, "--column", "--text-column", default=None)
    parser.add_argument("--no-header", dest="header", action="store_false", help="CSV/TSV files have no header row")
    parser.add_argument("--split-sentences", action="store_true", help="split lines into sentences (. ! ? 。！？)")
    parser.add_argument("--errors", choices=("strict", "skip"), default="strict",
                        help="bad lines: stop with an error (strict) or skip and count them")
    parser.add_argument("--holdout", type=float, default=0.01,
                        help="fraction of documents held out for evaluation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out choice")
    parser.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: min(8, CPUs))")
    parser.add_argument("--dtype", choices=("auto", "uint16", "uint32"), default="auto",
                        help="token id type on disk: auto = uint16 when every id fits")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild when the output holds other shards (a folder is replaced only when plmkit "
                             "made it and it holds nothing else)")


def cli_run(args: argparse.Namespace) -> int:
    field, column = args.field, column_value(args.column)
    text_column = column_value(args.text_column)
    if isinstance(text_column, int):
        column = text_column
    elif text_column is not None:
        field = text_column
    prepare(args.inputs, args.tokenizer, args.output, field=field, column=column, header=args.header,
            split_sentences=args.split_sentences, errors=args.errors, holdout=args.holdout, seed=args.seed,
            workers=args.workers, dtype=args.dtype, overwrite=args.overwrite)
    return 0


__all__ = ["FORMAT", "VERSION", "ShardSet", "SpecialIds", "prepare", "segmenter_name", "tokenizer_fingerprint",
           "unigram_baseline"]
