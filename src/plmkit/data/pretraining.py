"""Pretraining objectives over token shards: examples and batches for BERT, RoBERTa, ALBERT,
GPT and seq2seq models.

An objective fixes a list of examples once, from the shard offsets (which tokens each example
covers), and builds example ``i`` of epoch ``e`` from an RNG seeded by ``(seed, e, i)``, so any
example can be rebuilt anywhere, in any order. Static objectives (BERT, ALBERT) use epoch 0
for every epoch: the same pairs and masks each time, as the original BERT data. Dynamic ones
(RoBERTa) draw a new mask each epoch. ``collate`` pads a list of examples into a batch.

Batches (torch int64 tensors; B = batch, T = padded length, L = ``max_length``):

=============  ==============================================================================
objective      keys
=============  ==============================================================================
``bert``       input_ids, token_type_ids, attention_mask, labels (B, T); next_sentence_label (B,)
               (0 = B follows A, 1 = B is from another document)
``albert``     the same keys; next_sentence_label is sentence order (0 = in order, 1 = swapped)
``roberta``    input_ids, attention_mask, labels (B, T)
``electra``    the same (the generator's input; the model samples the replacements itself)
``gpt``        input_ids, labels (B, L), no padding (+ segment_ids with ``document_mask=True``)
``seq2seq``    input_ids, attention_mask (B, T), labels (B, T') = the original text + eos
=============  ==============================================================================

``labels`` are -100 where no loss is taken (unmasked and padded positions).

Not supported: ALBERT's n-gram masking, BART's sentence permutation and zero-length spans.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from plmkit.data.shards import ShardSet
from plmkit.data.tasks.features import collate  # one padding rule for pretraining and task batches

Example = dict[str, Any]
"""One unpadded example: 1-D int64 arrays per key, and ints for sequence-level labels."""

IGNORE = -100
_EXAMPLE_SALT = 0x5EED_E8A


class Objective:
    """A fixed list of examples over a :class:`ShardSet`, built on demand, and their collation."""

    name = "objective"
    dynamic = True

    def __init__(self, shards: ShardSet, max_length: int, seed: int = 0) -> None:
        if max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {max_length}")
        if shards.num_documents == 0:
            raise ValueError(f"{shards.path} ({shards.split}): no documents in this split")
        self.shards = shards
        self.max_length = max_length
        self.seed = seed
        self.specials = shards.specials
        self.pad_id = shards.specials.pad if shards.specials.pad is not None else 0

    def __len__(self) -> int:
        raise NotImplementedError

    def example(self, index: int, epoch: int = 0) -> Example:
        """Example ``index`` (0 <= index < len(self)) as seen in ``epoch``."""
        raise NotImplementedError

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Pad examples into a batch: ``input_ids`` with pad, ``labels`` with -100, others with 0;
        ``attention_mask`` marks real tokens."""
        return collate(examples, self.pad_id)

    def batch(self, indices: Sequence[int], epoch: int = 0) -> dict[str, torch.Tensor]:
        """The collated examples ``indices`` of ``epoch``."""
        return self.collate([self.example(int(i), epoch) for i in indices])

    def rng(self, index: int, epoch: int) -> np.random.Generator:
        """The generator of one example: seeded by (seed, epoch, index); epoch 0 when static."""
        self._check(index)
        return np.random.default_rng([self.seed, _EXAMPLE_SALT, epoch if self.dynamic else 0, index])

    def _check(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} out of range (0..{len(self) - 1})")

    def _tokens(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, word_start bool) of shard tokens [start, end)."""
        return (np.asarray(self.shards.tokens[start:end], dtype=np.int64),
                np.asarray(self.shards.word_start[start:end], dtype=bool))

    def _require(self, role: str, *fallbacks: str) -> int:
        for name in (role, *fallbacks):
            value = getattr(self.specials, name)
            if value is not None:
                return int(value)
        raise ValueError(f"objective {self.name!r} needs a {role} token; the tokenizer of {self.shards.path} has none")


# ---------------------------------------------------------------------------------------------
# Packing sentences into examples


def pack_sentences(shards: ShardSet, budget: int, *, cross_documents: bool, short_seq_prob: float = 0.0,
                   seed: int = 0) -> np.ndarray:
    """(C, 2) int64 token ranges [start, end): whole consecutive sentences up to ``budget`` tokens.

    Sentences longer than ``budget`` are cut into budget-sized pieces. With ``cross_documents``
    a chunk may run on into the next document, each document boundary costing one token (the
    separator placed there); otherwise chunks stop at document ends. ``short_seq_prob`` is the
    chance that a chunk aims at a random shorter length in [2, budget] (BERT's short sequences).
    """
    offsets = shards.sentence_offsets.tolist()
    first = np.zeros(shards.num_sentences + 1, dtype=bool)
    first[shards.document_offsets[:-1]] = True
    first_list = first.tolist()
    rng = np.random.default_rng([seed, _EXAMPLE_SALT, 1])
    chunks: list[tuple[int, int]] = []
    start, cost, target = -1, 0, budget
    for j in range(shards.num_sentences):
        a, b = offsets[j], offsets[j + 1]
        if start >= 0:
            extra = 1 if first_list[j] else 0
            if (first_list[j] and not cross_documents) or cost + extra + (b - a) > target:
                chunks.append((start, a))
                start = -1
            else:
                cost += extra + b - a
                continue
        target = budget
        if short_seq_prob > 0 and rng.random() < short_seq_prob:
            target = int(rng.integers(2, budget + 1))
        while b - a > budget:
            chunks.append((a, a + budget))
            a += budget
        start, cost = a, b - a
    if start >= 0:
        chunks.append((start, offsets[-1]))
    return np.asarray(chunks, dtype=np.int64).reshape(-1, 2)


# ---------------------------------------------------------------------------------------------
# Masked LM


class MaskedLM(Objective):
    """RoBERTa: masked LM on full sentences packed across documents, a new mask every epoch.

    ``[CLS] s1 s2 [SEP] s3 ... [SEP]``: whole sentences up to ``max_length``, a separator
    between documents. Of the maskable tokens (not special, not padding) ``mlm_probability`` are
    selected (whole words together with ``whole_word``); of those ``mask_token_prob`` (80%) become
    the mask token, ``random_token_prob`` (10%) a random token, the rest stay. ``dynamic=False``
    keeps one mask for all epochs. ELECTRA's generator input is the same with 85% / 0%.
    """

    name = "roberta"

    def __init__(self, shards: ShardSet, max_length: int = 512, *, seed: int = 0, mlm_probability: float = 0.15,
                 whole_word: bool = False, dynamic: bool = True, mask_token_prob: float = 0.8,
                 random_token_prob: float = 0.1) -> None:
        super().__init__(shards, max_length, seed)
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        if min(mask_token_prob, random_token_prob) < 0 or mask_token_prob + random_token_prob > 1:
            raise ValueError(f"mask_token_prob ({mask_token_prob}) and random_token_prob ({random_token_prob}) "
                             "must be >= 0 and add up to at most 1")
        self.mlm_probability = mlm_probability
        self.mask_token_prob, self.random_token_prob = mask_token_prob, random_token_prob
        self.whole_word = whole_word
        self.dynamic = dynamic
        self.mask_id = self._require("mask")
        self.cls_id = self._require("cls", "bos")
        self.sep_id = self._require("sep", "eos")
        special = np.asarray(shards.specials.present(), dtype=np.int64)
        self._special_ids = special
        self._random_ids = np.setdiff1d(np.arange(shards.vocab_size, dtype=np.int64), special)
        self._setup()

    def _setup(self) -> None:
        self.chunks = pack_sentences(self.shards, self.max_length - 2, cross_documents=True, seed=self.seed)

    def __len__(self) -> int:
        return len(self.chunks)

    def example(self, index: int, epoch: int = 0) -> Example:
        """input_ids, labels: (n,) with n <= max_length."""
        rng = self.rng(index, epoch)
        start, end = self.chunks[index]
        ids, words = self._tokens(start, end)
        bounds = self.shards.document_token_offsets
        cuts = bounds[(bounds > start) & (bounds < end)] - start
        ids = np.concatenate([[self.cls_id], np.insert(ids, cuts, self.sep_id), [self.sep_id]])
        words = np.concatenate([[True], np.insert(words, cuts, True), [True]])
        maskable = np.ones(len(ids), dtype=bool)
        maskable[[0, -1]] = False
        maskable[cuts + np.arange(1, len(cuts) + 1)] = False
        input_ids, labels = self.mask(ids, maskable, words, rng)
        return {"input_ids": input_ids, "attention_mask": np.ones(len(ids), dtype=np.int64), "labels": labels}

    def mask(self, ids: np.ndarray, maskable: np.ndarray, word_start: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """BERT masking of (n,) ids -> (input_ids, labels), labels -100 where not selected.

        Selects round(p * #candidates) tokens (at least one), never special tokens; with
        whole-word masking, whole words are added in random order while they fit the count.
        """
        candidates = maskable & ~np.isin(ids, self._special_ids)
        n_candidates = int(candidates.sum())
        labels = np.full(len(ids), IGNORE, dtype=np.int64)
        if n_candidates == 0:
            return ids.copy(), labels
        count = max(1, int(round(self.mlm_probability * n_candidates)))
        if self.whole_word:
            chosen = _pick_words(candidates, word_start, count, rng)
        else:
            chosen = rng.choice(np.flatnonzero(candidates), size=count, replace=False)
        labels[chosen] = ids[chosen]
        input_ids = ids.copy()
        draw = rng.random(len(chosen))
        to_mask, to_random = self.mask_token_prob, self.mask_token_prob + self.random_token_prob
        input_ids[chosen[draw < to_mask]] = self.mask_id
        random_pos = chosen[(draw >= to_mask) & (draw < to_random)]
        input_ids[random_pos] = self._random_ids[rng.integers(len(self._random_ids), size=len(random_pos))]
        return input_ids, labels


def _pick_words(candidates: np.ndarray, word_start: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of whole words (runs of candidates from a word start) in random order, skipping
    a word that would overshoot ``count`` (as the reference BERT implementation does)."""
    positions = np.flatnonzero(candidates)
    starts = word_start[positions].copy()
    starts[0] = True
    starts[1:] |= positions[1:] != positions[:-1] + 1  # a word never spans a special token
    group_bounds = np.append(np.flatnonzero(starts), len(positions))
    chosen: list[np.ndarray] = []
    total = 0
    for g in rng.permutation(len(group_bounds) - 1).tolist():
        size = group_bounds[g + 1] - group_bounds[g]
        if total + size > count:
            continue
        chosen.append(positions[group_bounds[g] : group_bounds[g + 1]])
        total += size
        if total == count:
            break
    return np.concatenate(chosen) if chosen else positions[:0]


class SentencePairMLM(MaskedLM):
    """BERT (``pair_task="nsp"``) and ALBERT (``"sop"``): masked LM plus a sentence-pair task.

    Each example is a chunk of whole sentences of one document (up to ``max_length - 3`` tokens,
    10% of them shorter: ``short_seq_prob``), split at a random sentence boundary into A and B:
    ``[CLS] A [SEP] B [SEP]`` with token types 0 and 1. NSP: with probability 1/2, B is replaced
    by as many tokens from a random sentence of another document on (label 1), else label 0. SOP: with probability 1/2, A and B are
    swapped (label 1). A chunk of one sentence is split at a random token. Static by default.
    """

    name = "bert"

    def __init__(self, shards: ShardSet, max_length: int = 512, *, seed: int = 0, mlm_probability: float = 0.15,
                 whole_word: bool = False, dynamic: bool = False, pair_task: str = "nsp",
                 short_seq_prob: float = 0.1, mask_token_prob: float = 0.8, random_token_prob: float = 0.1) -> None:
        if pair_task not in ("nsp", "sop"):
            raise ValueError(f"pair_task must be 'nsp' or 'sop', got {pair_task!r}")
        if pair_task == "nsp" and shards.num_documents < 2:
            raise ValueError(f"{shards.path} ({shards.split}): next-sentence prediction needs at least 2 documents")
        self.pair_task = pair_task
        self.short_seq_prob = short_seq_prob
        self.name = "bert" if pair_task == "nsp" else "albert"
        super().__init__(shards, max_length, seed=seed, mlm_probability=mlm_probability, whole_word=whole_word,
                         dynamic=dynamic, mask_token_prob=mask_token_prob, random_token_prob=random_token_prob)

    def _setup(self) -> None:
        self.budget = self.max_length - 3
        self.chunks = pack_sentences(self.shards, self.budget, cross_documents=False,
                                     short_seq_prob=self.short_seq_prob, seed=self.seed)

    def example(self, index: int, epoch: int = 0) -> Example:
        """input_ids, token_type_ids, labels: (n,), n <= max_length; next_sentence_label: int."""
        rng = self.rng(index, epoch)
        start, end = (int(x) for x in self.chunks[index])
        k = self._split_point(start, end, rng)
        a, b = (start, start + k), (start + k, end)
        label = int(rng.random() < 0.5) if (self.pair_task == "sop" or end - start >= 2) else 1
        if self.pair_task == "nsp" and label == 1:
            b = self._random_segment(start, end - start - k, rng)  # as long as the B it replaces
        elif label == 1:
            a, b = b, a
        ids_a, words_a = self._tokens(*a)
        ids_b, words_b = self._tokens(*b)
        ids = np.concatenate([[self.cls_id], ids_a, [self.sep_id], ids_b, [self.sep_id]])
        words = np.concatenate([[True], words_a, [True], words_b, [True]])
        types = np.zeros(len(ids), dtype=np.int64)
        types[len(ids_a) + 2 :] = 1
        maskable = np.ones(len(ids), dtype=bool)
        maskable[[0, len(ids_a) + 1, len(ids) - 1]] = False
        input_ids, labels = self.mask(ids, maskable, words, rng)
        return {"input_ids": input_ids, "token_type_ids": types, "attention_mask": np.ones(len(ids), dtype=np.int64),
                "labels": labels, "next_sentence_label": label}

    def _split_point(self, start: int, end: int, rng: np.random.Generator) -> int:
        """Length of A: a random sentence boundary inside the chunk, else a random token."""
        offsets = self.shards.sentence_offsets
        inner = offsets[np.searchsorted(offsets, start, "right") : np.searchsorted(offsets, end, "left")]
        if len(inner):
            return int(inner[rng.integers(len(inner))]) - start
        return int(rng.integers(1, end - start)) if end - start >= 2 else end - start

    def _random_segment(self, start: int, length: int, rng: np.random.Generator) -> tuple[int, int]:
        """``length`` (>= 1) tokens from a random sentence of another document on, running on
        into the next documents if needed (never into the chunk's own document), so a random B
        is as long as the B it replaces and the length gives nothing away."""
        doc = int(np.searchsorted(self.shards.document_token_offsets, start, "right")) - 1
        first, last = (int(x) for x in self.shards.document_offsets[doc : doc + 2])
        j = int(rng.integers(self.shards.num_sentences - (last - first)))  # a sentence outside the document
        j += (last - first) if j >= first else 0
        seg_start = int(self.shards.sentence_offsets[j])
        limit = int(self.shards.document_token_offsets[doc]) if seg_start < start else self.shards.num_tokens
        return seg_start, min(limit, seg_start + max(1, length))


# ---------------------------------------------------------------------------------------------
# Causal LM


class CausalLM(Objective):
    """GPT: the documents back to back, each followed by the end-of-text token (eos, or sep for a
    WordPiece vocabulary), cut into windows of exactly ``max_length`` tokens; the remainder at the
    end is dropped, so there is no padding. ``labels`` equal ``input_ids`` (the model shifts).
    With ``document_mask``, ``segment_ids`` (B, L) number the documents inside each window so
    attention can stay within a document.
    """

    name = "gpt"

    def __init__(self, shards: ShardSet, max_length: int = 1024, *, seed: int = 0, document_mask: bool = False) -> None:
        super().__init__(shards, max_length, seed)
        self.eos_id = self._require("eos", "sep")
        self.document_mask = document_mask
        bounds = shards.document_token_offsets
        self._starts = bounds[:-1] + np.arange(shards.num_documents)  # where each document begins in the stream
        self._lengths = np.diff(bounds)
        total = shards.num_tokens + shards.num_documents
        if total < max_length:
            raise ValueError(f"{shards.path} ({shards.split}): {total} tokens with separators, fewer than "
                             f"one window of max_length={max_length}")
        self._count = total // max_length

    def __len__(self) -> int:
        return self._count

    def example(self, index: int, epoch: int = 0) -> Example:
        """input_ids, labels: (max_length,); segment_ids (max_length,) with ``document_mask``."""
        self._check(index)  # windows are the same every epoch
        position = index * self.max_length + np.arange(self.max_length)
        doc = np.searchsorted(self._starts, position, "right") - 1
        local = position - self._starts[doc]
        is_eos = local == self._lengths[doc]
        at = self.shards.document_token_offsets[doc] + np.minimum(local, self._lengths[doc] - 1)
        ids = np.where(is_eos, self.eos_id, np.asarray(self.shards.tokens[at], dtype=np.int64))
        out: Example = {"input_ids": ids, "labels": ids.copy()}
        if self.document_mask:
            out["segment_ids"] = doc - doc[0]
        return out


# ---------------------------------------------------------------------------------------------
# Seq2seq


class SpanCorruption(Objective):
    """BART text infilling: spans whose lengths follow Poisson(``mean_span``) (at least 1),
    covering ``noise_density`` of the tokens, each replaced by one mask token.

    Examples are chunks of whole sentences of one document (up to ``max_length - 1`` tokens):
    ``input_ids`` = corrupted chunk + eos, ``labels`` = chunk + eos. A new corruption each epoch.
    """

    name = "seq2seq"

    def __init__(self, shards: ShardSet, max_length: int = 512, *, seed: int = 0, noise_density: float = 0.3,
                 mean_span: float = 3.0, dynamic: bool = True) -> None:
        super().__init__(shards, max_length, seed)
        if not 0.0 < noise_density < 1.0:
            raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
        self.noise_density = noise_density
        self.mean_span = mean_span
        self.dynamic = dynamic
        self.mask_id = self._require("mask")
        self.eos_id = self._require("eos", "sep")
        self.chunks = pack_sentences(shards, max_length - 1, cross_documents=False, seed=seed)

    def __len__(self) -> int:
        return len(self.chunks)

    def example(self, index: int, epoch: int = 0) -> Example:
        """input_ids (m,), attention_mask (m,), labels (n,) with m <= n <= max_length."""
        rng = self.rng(index, epoch)
        ids, _ = self._tokens(*self.chunks[index])
        corrupted = self.infill(ids, rng)
        inputs = np.append(corrupted, self.eos_id)
        return {"input_ids": inputs, "attention_mask": np.ones(len(inputs), dtype=np.int64),
                "labels": np.append(ids, self.eos_id)}

    def infill(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n,) ids -> (m,) ids with random non-adjacent spans replaced by one mask token each."""
        n = len(ids)
        noise = min(n, max(1, int(round(self.noise_density * n))))
        spans = np.maximum(1, rng.poisson(self.mean_span, size=noise))
        spans = spans[: int(np.searchsorted(np.cumsum(spans), noise)) + 1]
        spans[-1] -= spans.sum() - noise
        spans = list(spans.tolist())
        while len(spans) - 1 > n - noise:  # spans need a kept token between them
            spans[-2] += spans.pop()
        free = (n - noise) - (len(spans) - 1)
        cuts = np.sort(rng.integers(0, free + 1, size=len(spans)))
        gaps = np.diff(np.concatenate([[0], cuts, [free]]))
        gaps[1:-1] += 1
        pieces: list[np.ndarray] = []
        position = 0
        for gap, span in zip(gaps[:-1].tolist(), spans):
            pieces += [ids[position : position + gap], np.asarray([self.mask_id], dtype=np.int64)]
            position += gap + span
        pieces.append(ids[position:])
        return np.concatenate(pieces)


# ---------------------------------------------------------------------------------------------
# Several corpora


class Mixture(Objective):
    """One objective over several shard folders (a general corpus and in-domain text, say), each
    weighted: per epoch source ``i`` contributes ``round(weight_i * len_i)`` examples, so weight 4 is
    four passes over a small domain corpus and 0.5 a random half of a large one (a fixed half: the
    examples are taken from a per-source permutation). Repeats of an example get their own masks
    where the objective is dynamic. Examples are listed in a fixed shuffled order, so the first N
    (an evaluation limit) are a sample of every source.
    """

    def __init__(self, parts: Sequence[Objective], weights: Sequence[float], seed: int = 0) -> None:
        if not parts or len(parts) != len(weights):
            raise ValueError(f"a mixture needs one weight per source, got {len(parts)} sources and {len(weights)} weights")
        first = parts[0].shards
        for part in parts[1:]:
            if (part.shards.meta["tokenizer"].get("fingerprint") != first.meta["tokenizer"].get("fingerprint")
                    or part.shards.vocab_size != first.vocab_size):
                raise ValueError(f"{part.shards.path} and {first.path} were tokenized with different tokenizers; "
                                 "prepare every source with the same one")
        if any(w <= 0 for w in weights):
            raise ValueError(f"mixture weights must be positive, got {list(weights)}")
        self.parts, self.weights = list(parts), [float(w) for w in weights]
        self.shards, self.seed, self.max_length = first, seed, parts[0].max_length
        self.specials, self.pad_id, self.name = parts[0].specials, parts[0].pad_id, parts[0].name
        self.dynamic = any(p.dynamic for p in parts)
        self.counts = [max(1, round(w * len(p))) for p, w in zip(self.parts, self.weights)]
        self.offsets = np.cumsum([0, *self.counts])
        rng = np.random.default_rng([seed, _EXAMPLE_SALT, 2])
        self._source_orders = [rng.permutation(len(p)) for p in self.parts]
        self._order = rng.permutation(int(self.offsets[-1]))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def source_of(self, index: int) -> tuple[int, int, int]:
        """(source, example of that source, repeat) of mixture example ``index``."""
        self._check(index)
        k = int(self._order[index])
        i = int(np.searchsorted(self.offsets, k, "right")) - 1
        repeat, j = divmod(k - int(self.offsets[i]), len(self.parts[i]))
        return i, int(self._source_orders[i][j]), repeat

    def example(self, index: int, epoch: int = 0) -> Example:
        i, j, repeat = self.source_of(index)
        passes = -(-self.counts[i] // len(self.parts[i]))  # ceil: repeats per epoch
        return self.parts[i].example(j, epoch * passes + repeat)


# ---------------------------------------------------------------------------------------------
# Registry

OBJECTIVES: dict[str, tuple[type[Objective], dict[str, Any]]] = {
    "bert": (SentencePairMLM, {"pair_task": "nsp"}),
    "albert": (SentencePairMLM, {"pair_task": "sop"}),
    "roberta": (MaskedLM, {}),
    "electra": (MaskedLM, {}),
    "gpt": (CausalLM, {}),
    "seq2seq": (SpanCorruption, {}),
}
DEFAULTS: dict[str, dict[str, Any]] = {"electra": {"mask_token_prob": 0.85, "random_token_prob": 0.0}}
"""Option defaults that differ from the class's: ELECTRA's generator sees [MASK] or the original token."""
ALIASES = {"gpt2": "gpt", "mlm": "roberta", "clm": "gpt", "bart": "seq2seq", "rtd": "electra"}


def build_objective(name: str, shards: ShardSet, max_length: int, *, seed: int = 0, **options: Any) -> Objective:
    """The objective ``name`` (bert, albert, roberta, electra, gpt, seq2seq; or a model family: gpt2)
    over ``shards``. ``options`` are the objective class's keyword arguments; an unknown one is
    an error that lists the valid ones."""
    key = ALIASES.get(name, name)
    if key not in OBJECTIVES:
        raise ValueError(f"unknown pretraining objective {name!r}; choose from {', '.join([*OBJECTIVES, *ALIASES])}")
    cls, fixed = OBJECTIVES[key]
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "shards", "max_length", "seed", *fixed)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"objective {key!r} has no option {', '.join(map(repr, unknown))}; "
                         f"valid options: {', '.join(valid)}")
    built = cls(shards, max_length, seed=seed, **fixed, **{**DEFAULTS.get(key, {}), **options})
    built.name = key
    return built
