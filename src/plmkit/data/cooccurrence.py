"""Token vectors from co-occurrence statistics: the cheap first stage of pretraining.

Which tokens appear near which others says much of what a language model's embedding table
has to learn, and counting it costs seconds where a Transformer needs hours of gradient steps to
absorb the same from masked-token predictions. This module counts, in a shard folder's training
split, how often token b appears within ``window`` tokens of token a inside the same document
(weighted 1/distance), turns the counts into positive pointwise mutual information (PPMI, with
the context distribution smoothed by ``alpha``, as in Levy, Goldberg & Dagan 2015) and keeps the
top ``dim`` singular directions: one vector per token id, ready to initialize an embedding table
(`plmkit pretrain --set embeddings.init=cooccurrence`). Tokens that never occur keep their random
vectors.

Shapes: V vocabulary, D vector size, P co-occurring pairs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from plmkit.data.shard_set import ShardSet

log = logging.getLogger(__name__)


def cooccurrence_counts(sources: Sequence[tuple[str | Path, float]], *, window: int = 10,
                        max_tokens: int = 20_000_000) -> tuple[sp.csr_matrix, int]:
    """Symmetric (V, V) counts of token pairs at most `window` apart inside a document, each
    weighted 1/distance and by its source's weight; special tokens are left out. Reads at most
    `max_tokens` tokens of each source's train split. Returns the counts and the tokens read."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    first = ShardSet.open(sources[0][0], "train")
    vocab = first.vocab_size
    total = sp.csr_matrix((vocab, vocab), dtype=np.float64)
    read = 0
    for path, weight in sources:
        shards = ShardSet.open(path, "train")
        tokens = np.asarray(shards.tokens[:max_tokens], dtype=np.int64)  # (N,)
        read += len(tokens)
        document = np.searchsorted(shards.document_token_offsets, np.arange(len(tokens)), "right")  # (N,)
        ordinary = ~np.isin(tokens, np.asarray(shards.specials.present(), dtype=np.int64))
        for distance in range(1, window + 1):
            ok = ordinary[:-distance] & ordinary[distance:] & (document[:-distance] == document[distance:])
            codes, counts = np.unique(tokens[:-distance][ok] * vocab + tokens[distance:][ok], return_counts=True)
            pairs = sp.csr_matrix((counts * (weight / distance), (codes // vocab, codes % vocab)),
                                  shape=(vocab, vocab))
            total = total + pairs + pairs.T
    return total, read


def ppmi(counts: sp.csr_matrix, alpha: float = 0.75) -> sp.csr_matrix:
    """Positive PMI of (V, V) counts, max(0, log p(a, b) / (p(a) p_alpha(b))), with the context
    distribution raised to `alpha` (which keeps rare contexts from dominating)."""
    coo = counts.tocoo()
    total = coo.data.sum()
    rows = np.asarray(counts.sum(axis=1)).ravel()
    contexts = np.asarray(counts.sum(axis=0)).ravel() ** alpha
    contexts *= total / contexts.sum()
    with np.errstate(divide="ignore"):
        pmi = np.log(coo.data * total / (rows[coo.row] * contexts[coo.col]))
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)


def cooccurrence_embeddings(sources: Sequence[tuple[str | Path, float]], dim: int, *, window: int = 10,
                            max_tokens: int = 20_000_000, alpha: float = 0.75,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(V, dim) float32 token vectors (U sqrt(S) of the PPMI matrix's truncated SVD) and a (V,)
    bool mask of the tokens that occurred. Needs `dim` < the number of distinct tokens seen."""
    started = time.perf_counter()
    counts, read = cooccurrence_counts(sources, window=window, max_tokens=max_tokens)
    matrix = ppmi(counts, alpha)
    seen = np.asarray(counts.sum(axis=1)).ravel() > 0
    if dim >= int(seen.sum()):
        raise ValueError(f"{int(seen.sum())} distinct tokens occur in the corpus: too few for {dim}-dimensional "
                         "co-occurrence vectors; use random embeddings for so small a corpus")
    start = np.random.default_rng(seed).standard_normal(matrix.shape[0])  # a fixed start: repeatable vectors
    u, s, _ = svds(matrix, k=dim, v0=start)
    vectors = (u * np.sqrt(s)).astype(np.float32)  # (V, D)
    log.info("co-occurrence vectors: %d tokens read, %d distinct, %d pairs, %d dims in %.0f s", read,
             int(seen.sum()), matrix.nnz, dim, time.perf_counter() - started)
    return vectors, seen


def scaled(vectors: np.ndarray, seen: np.ndarray, std: float) -> np.ndarray:
    """`vectors` scaled so that the rows of seen tokens have standard deviation `std` (the size of a
    freshly initialized embedding table, so position embeddings still count beside them)."""
    spread = float(vectors[seen].std())
    return vectors * (std / spread) if spread > 0 else vectors


__all__ = ["cooccurrence_counts", "cooccurrence_embeddings", "ppmi", "scaled"]
