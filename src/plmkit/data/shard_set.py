"""Reading token shards (written by `plmkit.data.shards.prepare`), checked against meta.json.

`ShardSet.open` verifies, before any token is used, that each file of the split has the size
the recorded counts imply, that the sentence and document offsets run from 0 to those counts
without going back, and that the tokenizer beside the shards is the one they were built with
(its fingerprint, and the digest of its vocabulary). A difference is an `IntegrityError` that
names the file and says how to rebuild. (A file changed without changing its size passes the
size check; its offsets or token ids usually do not.)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plmkit.data.tokenizer import Tokenizer, vocabulary_digest
from plmkit.errors import IntegrityError

logger = logging.getLogger(__name__)

FORMAT = "plmkit-shards"
VERSION = 1
SPECIAL_ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the tokenizer's special tokens (None where the vocabulary has none)."""

    pad: int | None = None
    unk: int | None = None
    cls: int | None = None
    sep: int | None = None
    mask: int | None = None
    bos: int | None = None
    eos: int | None = None

    def present(self) -> list[int]:
        """The distinct ids that exist."""
        ids = (self.pad, self.unk, self.cls, self.sep, self.mask, self.bos, self.eos)
        return sorted({i for i in ids if i is not None})


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's full serialization (model, normalizer, pre-tokenizer) and roles."""
    payload = tok.backend.to_str() + json.dumps(tok.special_tokens, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ShardSet:
    """Random access to one split of a shard folder.

    Attributes:
        tokens: (N,) memory-mapped token ids of the split, documents back to back.
        word_start: (N,) memory-mapped uint8, 1 where a token starts a whole word.
        sentence_offsets: (S + 1,) int64, sentence j is ``tokens[sentence_offsets[j]:sentence_offsets[j + 1]]``.
        document_offsets: (D + 1,) int64, document i holds sentences ``document_offsets[i]:document_offsets[i + 1]``.
        document_token_offsets: (D + 1,) int64, document i is ``tokens[a:b]`` with these bounds.
        specials: the tokenizer's special ids; ``vocab_size``: its vocabulary size.
    """

    def __init__(self, path: Path, split: str, meta: dict[str, Any]) -> None:
        self.path = path
        self.split = split
        self.meta = meta
        folder = path / split
        self.dtype = np.dtype(meta["dtype"])
        self.tokens = _memmap(folder / "tokens.bin", self.dtype)
        self.word_start = _memmap(folder / "word_start.bin", np.dtype(np.uint8))
        self.sentence_offsets = np.fromfile(folder / "sentences.bin", dtype=np.int64)
        self.document_offsets = np.fromfile(folder / "documents.bin", dtype=np.int64)
        self.document_token_offsets = self.sentence_offsets[self.document_offsets]
        info = meta["tokenizer"]
        self.vocab_size: int = int(info["vocab_size"])
        self.kind: str = info["kind"]
        self.specials = SpecialIds(**{k: info["special_ids"].get(k) for k in SPECIAL_ROLES})

    @classmethod
    def open(cls, path: str | Path, split: str = "train") -> ShardSet:
        """Open a split ("train" or "eval") of a folder written by :func:`prepare`."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{path}: not a shard folder (no meta.json); build one with `plmkit prepare`")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{meta_path}: not {FORMAT} version {VERSION} (format {meta.get('format')!r}, "
                             f"version {meta.get('version')!r}); rebuild with `plmkit prepare`")
        if split not in meta["splits"]:
            raise ValueError(f"{path}: no split {split!r}; splits are {', '.join(meta['splits'])}")
        _verify_tokenizer(path, meta)
        shards = cls(path, split, meta)
        shards._verify()
        return shards

    def _verify(self) -> None:
        """IntegrityError when a file's size or the offsets disagree with the counts meta.json recorded."""
        counts, folder = self.meta["splits"][self.split], self.path / self.split
        rebuild = "; the shards were changed after `plmkit prepare` wrote them: rebuild them (plmkit prepare ... --overwrite)"
        expected = {"tokens.bin": counts["tokens"] * self.dtype.itemsize, "word_start.bin": counts["tokens"],
                    "sentences.bin": (counts["sentences"] + 1) * 8, "documents.bin": (counts["documents"] + 1) * 8}
        for name, size in expected.items():
            actual = (folder / name).stat().st_size
            if actual != size:
                raise IntegrityError(f"{folder / name}: {actual} bytes, but meta.json records {counts['tokens']} "
                                     f"tokens, {counts['sentences']} sentences and {counts['documents']} documents "
                                     f"({size} bytes expected){rebuild}")
        for name, offsets, end in (("sentences.bin", self.sentence_offsets, counts["tokens"]),
                                   ("documents.bin", self.document_offsets, counts["sentences"])):
            if offsets[0] != 0 or offsets[-1] != end or (len(offsets) > 1 and np.any(np.diff(offsets) < 0)):
                raise IntegrityError(f"{folder / name}: offsets are not an increasing list from 0 to {end}{rebuild}")

    @property
    def tokenizer_path(self) -> Path:
        """The folder with the tokenizer the shards were built with."""
        return self.path / "tokenizer"

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return self.num_documents

    def document(self, i: int) -> np.ndarray:
        """(n,) token ids of document ``i`` (its sentences back to back)."""
        a, b = self.document_token_offsets[i], self.document_token_offsets[i + 1]
        return np.asarray(self.tokens[a:b])

    def sentence(self, j: int) -> np.ndarray:
        """(n,) token ids of sentence ``j`` (global sentence index)."""
        return np.asarray(self.tokens[self.sentence_offsets[j] : self.sentence_offsets[j + 1]])

    def sentences(self, i: int) -> list[np.ndarray]:
        """The sentences of document ``i``, each (n_j,) token ids."""
        return [self.sentence(j) for j in range(self.document_offsets[i], self.document_offsets[i + 1])]

    def __repr__(self) -> str:
        return (f"ShardSet({str(self.path)!r}, split={self.split!r}, documents={self.num_documents}, "
                f"sentences={self.num_sentences}, tokens={self.num_tokens}, dtype={self.dtype.name})")


def unigram_baseline(shards_dir: str | Path) -> float:
    """Cross-entropy (nats) of the held-out split's non-special tokens under the train split's
    unigram distribution (add-one smoothed): the plateau a language model must get below."""
    train, held = ShardSet.open(shards_dir, "train"), ShardSet.open(shards_dir, "eval")
    ids = np.asarray(held.tokens)
    return float(-unigram_log_probs(train)[ids[~np.isin(ids, train.specials.present())]].mean())


def unigram_log_probs(shards: ShardSet) -> np.ndarray:
    """(V,) float64 log probability of each token in `shards` (add-one smoothed; special tokens
    count as never seen)."""
    counts = np.bincount(np.asarray(shards.tokens), minlength=shards.vocab_size).astype(np.float64)
    counts[shards.specials.present()] = 0
    return np.log((counts + 1) / (counts.sum() + shards.vocab_size))


_VERIFIED: dict[tuple[str, int, int], None] = {}  # (folder, mtimes) whose tokenizer was checked


def _verify_tokenizer(path: Path, meta: dict[str, Any]) -> None:
    """IntegrityError when the tokenizer beside the shards is not the one they were built with."""
    folder = path / "tokenizer"
    files = sorted(folder.glob("*")) if folder.is_dir() else []
    if not files:
        raise IntegrityError(f"{folder}: missing; the shards need the tokenizer they were built with "
                             "(rebuild them with plmkit prepare ... --overwrite)")
    key = (str(folder.resolve()), max(f.stat().st_mtime_ns for f in files), (path / "meta.json").stat().st_mtime_ns)
    if key in _VERIFIED:
        return
    recorded = meta["tokenizer"]
    tokenizer = Tokenizer.load(folder)
    if tokenizer_fingerprint(tokenizer) != recorded.get("fingerprint"):
        differs = []
        if tokenizer.vocab_size != recorded.get("vocab_size"):
            differs.append(f"vocabulary size {tokenizer.vocab_size}, recorded {recorded.get('vocab_size')}")
        specials = {role: getattr(tokenizer, f"{role}_id") for role in SPECIAL_ROLES}
        if specials != {role: recorded.get("special_ids", {}).get(role) for role in SPECIAL_ROLES}:
            differs.append(f"special token ids {specials}, recorded {recorded.get('special_ids')}")
        if "vocabulary" in recorded and vocabulary_digest(tokenizer) != recorded["vocabulary"]:
            differs.append("the tokens or their ids differ")
        if differs:
            raise IntegrityError(f"{folder}: not the tokenizer these shards were built with ({'; '.join(differs)}); "
                                 "token ids would mean other tokens. Put back the original tokenizer or rebuild the "
                                 "shards with this one (plmkit prepare CORPUS --tokenizer ... -o NEW_FOLDER)")
        if "vocabulary" in recorded:
            logger.warning("%s: serialized differently from the one the shards recorded (another tokenizers "
                           "version?), with the same vocabulary and special tokens", folder)
        else:
            logger.warning("%s: differs from the tokenizer these shards recorded (same vocabulary size and special "
                           "ids; meta.json of an older plmkit cannot tell more); rebuild the shards to be sure", folder)
    _VERIFIED[key] = None


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
