"""Tokenizers: train WordPiece or byte-level BPE, load HF-compatible files, encode and decode.

`Tokenizer` wraps a Rust `tokenizers.Tokenizer` (its `backend`) and knows which tokens play which
role (pad, unk, cls, sep, mask, bos, eos). Three styles are built in:

- ``bert``    WordPiece, BertNormalizer (optional lowercasing; accent stripping follows it; CJK
              characters one per token), BertPreTokenizer, ``[CLS] A [SEP] B [SEP]`` with type ids
              0/1, special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]``, ``##`` continuing prefix.
- ``gpt2``    byte-level BPE (no prefix space), no special tokens added on encode, pairs are
              concatenated with type ids 0/1; ``<|endoftext|>`` is bos, eos and pad.
- ``roberta`` byte-level BPE with ``<s> A </s></s> B </s>``, specials ``<s> <pad> </s> <unk> <mask>``.

Files understood: ``vocab.txt`` (BERT), ``vocab.json`` + ``merges.txt`` (GPT-2 / RoBERTa) and
``tokenizer.json`` (any tokenizers model). `Tokenizer.save` writes all of them plus
``tokenizer_config.json`` and ``special_tokens_map.json`` so `transformers.AutoTokenizer` loads the
folder with identical ids. The ``plmkit tokenizer`` subcommand (train / encode) is in
`plmkit.data.tokenizer_cli`.

Training text reaches the tokenizer in pieces of at most ``_PIECE_CHARS`` characters, cut at
whitespace (`bounded_pieces`): a single line of hundreds of megabytes trains in bounded memory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Encoding as _RustEncoding
from tokenizers import Tokenizer as _RustTokenizer

from plmkit.files import atomic_write_text
from plmkit.rundir import BEST_DIR, FINAL_DIR, hub_hint

ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
BERT_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
ROBERTA_SPECIALS = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>",
                    "cls": "<s>", "sep": "</s>"}
GPT2_EOT = "<|endoftext|>"
GPT2_SPECIALS = {"bos": GPT2_EOT, "eos": GPT2_EOT, "pad": GPT2_EOT}
# Names recognised as a role when a file does not say which token plays it.
_ROLE_NAMES = {"pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"), "cls": ("[CLS]", "<s>"),
               "sep": ("[SEP]", "</s>"), "mask": ("[MASK]", "<mask>"),
               "bos": ("<s>", GPT2_EOT), "eos": ("</s>", GPT2_EOT)}
_MODEL_KINDS = {"WordPiece": "wordpiece", "BPE": "bpe", "Unigram": "unigram", "WordLevel": "wordlevel"}
_HUGE = 10**9  # HF writes model_max_length = 1e30 for "no limit"
_PIECE_CHARS = 1 << 16  # longest text the trainer sees at once
_SPACES = (" ", "\t", "\n", "\r", "\u3000", "\xa0")


@dataclass
class Encoding:
    """One encoded text or text pair; every list has one entry per token (length T).

    ``offsets`` are (start, end) character spans into the text the token came from (the first or
    the second of a pair, see ``sequence_ids``); special and padding tokens get (0, 0).
    ``word_ids``/``sequence_ids`` are None for special and padding tokens.
    """

    ids: list[int]
    type_ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    attention_mask: list[int]
    special_tokens_mask: list[int]
    word_ids: list[int | None]
    sequence_ids: list[int | None]
    overflowing: list[Encoding] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_rust(cls, enc: _RustEncoding) -> Encoding:
        return cls(ids=enc.ids, type_ids=enc.type_ids, tokens=enc.tokens, offsets=enc.offsets,
                   attention_mask=enc.attention_mask, special_tokens_mask=enc.special_tokens_mask,
                   word_ids=enc.word_ids, sequence_ids=enc.sequence_ids,
                   overflowing=[cls.from_rust(o) for o in enc.overflowing])


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the role of each special token.

    Args:
        backend: the Rust tokenizer (normalizer, pre-tokenizer, model, post-processor, decoder).
        kind: "wordpiece" | "bpe" (also "unigram" / "wordlevel" for foreign tokenizer.json files).
        special_tokens: role -> token text, roles from ``ROLES``; missing roles have no token.
        lowercase: whether the normalizer lowercases (informational; saved as ``do_lower_case``).
        model_max_length: default truncation length when ``max_length`` is not given.
        padding_side: "right" or "left", the default side for padding batches.
    """

    def __init__(self, backend: _RustTokenizer, kind: str, special_tokens: dict[str, str],
                 lowercase: bool = False, model_max_length: int | None = None,
                 padding_side: str = "right") -> None:
        unknown = set(special_tokens) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown special token roles {sorted(unknown)}; valid roles: {ROLES}")
        _check_choice("padding_side", padding_side, ("right", "left"))
        self.backend = backend
        self.kind = kind
        self.special_tokens = {r: t for r, t in special_tokens.items() if backend.token_to_id(t) is not None}
        self.lowercase = lowercase
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.source: Path | None = None
        """The file or folder `load` read this tokenizer from (None when built in memory)."""
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers (the lock is not)
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    # ---- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def _role_id(self, role: str) -> int | None:
        token = self.special_tokens.get(role)
        return None if token is None else self.backend.token_to_id(token)

    pad_id = property(lambda self: self._role_id("pad"), doc="id of the padding token or None")
    unk_id = property(lambda self: self._role_id("unk"), doc="id of the unknown token or None")
    cls_id = property(lambda self: self._role_id("cls"), doc="id of the classification token or None")
    sep_id = property(lambda self: self._role_id("sep"), doc="id of the separator token or None")
    mask_id = property(lambda self: self._role_id("mask"), doc="id of the mask token or None")
    bos_id = property(lambda self: self._role_id("bos"), doc="id of the begin-of-text token or None")
    eos_id = property(lambda self: self._role_id("eos"), doc="id of the end-of-text token or None")

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of every special token (roles and other added special tokens), sorted."""
        ids = {i for i, t in self.backend.get_added_tokens_decoder().items() if t.special}
        ids.update(i for r in self.special_tokens if (i := self._role_id(r)) is not None)
        return sorted(ids)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, id_: int) -> str | None:
        return self.backend.id_to_token(int(id_))

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int | None]:
        return [self.backend.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str | None]:
        return [self.backend.id_to_token(int(i)) for i in ids]

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` without special tokens."""
        return self.backend.encode(text, add_special_tokens=False).tokens

    # ---- encoding ---------------------------------------------------------------------------
    def encode(self, text: str | Sequence[str], pair: str | Sequence[str] | None = None,
               add_special_tokens: bool = True, max_length: int | None = None,
               truncation: bool | str = True, stride: int = 0,
               is_split_into_words: bool = False) -> Encoding:
        """Encode one text (or pair) without padding.

        ``truncation``: True/"longest_first" (drop tokens from the longer of the pair),
        "only_second", or False; applied when ``max_length`` (or ``model_max_length``) is set.
        With ``stride`` > 0 the cut-off tokens come back as windows in ``Encoding.overflowing``,
        each repeating ``stride`` tokens of the previous one. ``is_split_into_words``: ``text`` and
        ``pair`` are lists of words and ``word_ids`` index them.
        """
        return self.encode_batch([text], None if pair is None else [pair], add_special_tokens, max_length,
                                 truncation, stride=stride, is_split_into_words=is_split_into_words)[0]

    def encode_batch(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                     add_special_tokens: bool = True, max_length: int | None = None,
                     truncation: bool | str = True, padding: bool | str = False,
                     pad_to_multiple_of: int | None = None, padding_side: str | None = None,
                     stride: int = 0, is_split_into_words: bool = False) -> list[Encoding]:
        """Encode many texts (or pairs) in parallel; see `encode` and `__call__` for the options."""
        return [Encoding.from_rust(e) for e in self._encode_rust(
            texts, pairs, add_special_tokens, max_length, truncation, padding, pad_to_multiple_of,
            padding_side, is_split_into_words, stride)]

    def __call__(self, texts: str | Sequence[str], pairs: str | Sequence[str] | None = None, *,
                 max_length: int | None = None, truncation: bool | str = True,
                 padding: bool | str = True, return_tensors: str | None = "pt",
                 return_offsets_mapping: bool = False, return_special_tokens_mask: bool = False,
                 add_special_tokens: bool = True, pad_to_multiple_of: int | None = None,
                 padding_side: str | None = None, is_split_into_words: bool = False) -> dict[str, Any]:
        """Encode a batch for a model. A single string counts as a batch of one.

        ``padding``: True/"longest" (to the longest in the batch), "max_length" (to ``max_length``)
        or False. Returns ``input_ids``, ``token_type_ids``, ``attention_mask`` (B, T) and, when
        asked, ``offset_mapping`` (B, T, 2) and ``special_tokens_mask`` (B, T): int64 torch tensors
        with ``return_tensors="pt"``, lists of lists with ``return_tensors=None``.
        """
        if isinstance(texts, str) or (is_split_into_words and texts and isinstance(texts[0], str)):
            texts = [texts]
            pairs = None if pairs is None else [pairs]
        if not texts:
            raise ValueError("no texts to encode")
        encs = self._encode_rust(texts, pairs, add_special_tokens, max_length, truncation, padding,
                                 pad_to_multiple_of, padding_side, is_split_into_words)
        out: dict[str, Any] = {"input_ids": [e.ids for e in encs],
                               "token_type_ids": [e.type_ids for e in encs],
                               "attention_mask": [e.attention_mask for e in encs]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encs]
        if return_special_tokens_mask:
            out["special_tokens_mask"] = [e.special_tokens_mask for e in encs]
        if return_tensors is None:
            return out
        _check_choice("return_tensors", return_tensors, ("pt", None))
        lengths = {len(e.ids) for e in encs}
        if len(lengths) > 1:
            raise ValueError(f"cannot make a tensor of sequences with lengths {sorted(lengths)}; "
                             "use padding=True or return_tensors=None")
        import torch

        return {k: torch.tensor(v, dtype=torch.long).reshape(len(encs), -1, *([2] if k == "offset_mapping" else []))
                for k, v in out.items()}

    def _encode_rust(self, texts: Sequence[Any], pairs: Sequence[Any] | None, add_special_tokens: bool,
                     max_length: int | None, truncation: bool | str, padding: bool | str,
                     pad_to_multiple_of: int | None, padding_side: str | None,
                     is_split_into_words: bool, stride: int = 0) -> list[_RustEncoding]:
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a list of texts, got a single string")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs")
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        with self._settings(max_length, truncation, stride, pairs is not None, padding,
                            pad_to_multiple_of, padding_side):
            return _run(lambda: self.backend.encode_batch(inputs, is_pretokenized=is_split_into_words,
                                                          add_special_tokens=add_special_tokens))

    @contextmanager
    def _settings(self, max_length: int | None, truncation: bool | str, stride: int, has_pair: bool,
                  padding: bool | str = False, pad_to_multiple_of: int | None = None,
                  padding_side: str | None = None) -> Iterator[None]:
        """Set truncation and padding on the backend for one call, then clear them again."""
        strategy = _truncation_strategy(truncation, has_pair)
        length = max_length if max_length is not None else self.model_max_length
        pad = _padding_length(padding, length)
        with self._lock:
            try:
                if strategy is not None and length is not None:
                    self.backend.enable_truncation(length, stride=stride, strategy=strategy)
                if pad is not False:
                    if self.pad_id is None:
                        raise ValueError("padding needs a pad token, and this vocabulary has none")
                    side = padding_side or self.padding_side
                    _check_choice("padding_side", side, ("right", "left"))
                    self.backend.enable_padding(direction=side, pad_id=self.pad_id,
                                                pad_token=self.special_tokens["pad"], length=pad,
                                                pad_to_multiple_of=pad_to_multiple_of)
                yield
            finally:
                self.backend.no_truncation()
                self.backend.no_padding()

    # ---- decoding ---------------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of a 1-D sequence of ids (list or tensor)."""
        return self.backend.decode(_int_list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = True) -> list[str]:
        """Texts of a batch of id sequences (list of lists or a (B, T) tensor)."""
        return self.backend.decode_batch([_int_list(s) for s in batch], skip_special_tokens=skip_special_tokens)

    # ---- files ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, lowercase: bool | None = None,
             merges: str | os.PathLike | None = None) -> Tokenizer:
        """Load a folder (tokenizer.json preferred, else vocab.txt, else vocab.json + merges.txt) or a file.

        ``lowercase`` applies to vocab.txt only; by default it is True unless the vocabulary has
        tokens that lowercasing would change (a cased vocabulary). ``merges`` names the merges file
        of a BPE vocab.json (default: merges.txt, or the vocab name with "vocab" -> "merges").
        """
        path = Path(path)
        if path.is_dir():
            for folder in (path, path / BEST_DIR, path / FINAL_DIR):  # a training run: its model's tokenizer
                for name in ("tokenizer.json", "vocab.txt", "vocab.json"):
                    if (folder / name).is_file():
                        tokenizer = cls.load(folder / name, lowercase=lowercase, merges=merges)
                        tokenizer.source = folder
                        return tokenizer
            raise FileNotFoundError(f"{path}: no tokenizer.json, vocab.txt or vocab.json + merges.txt in this folder"
                                    f" (nor in its {BEST_DIR}/ or {FINAL_DIR}/)")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such tokenizer file or folder.{hub_hint(path)}")
        if path.suffix == ".json":
            data = _read_json(path)
            if isinstance(data, dict) and isinstance(data.get("model"), dict):
                tokenizer = _from_tokenizer_json(path)
            else:
                tokenizer = _from_bpe_files(path, _merges_path(path, merges))
        elif path.name.endswith("merges.txt"):
            raise ValueError(f"{path}: a merges file alone is not a tokenizer; pass its vocab.json or the folder")
        else:
            if lowercase is None and isinstance(_sidecar_config(path.parent).get("do_lower_case"), bool):
                lowercase = _sidecar_config(path.parent)["do_lower_case"]
            tokenizer = _from_vocab_txt(path, lowercase)
        tokenizer.source = path
        return tokenizer

    def save(self, directory: str | os.PathLike) -> Path:
        """Write tokenizer.json, vocab.txt or vocab.json + merges.txt, tokenizer_config.json and
        special_tokens_map.json into ``directory`` (created if needed); returns the folder.

        Files of those names already in ``directory`` are replaced (as with a model's
        ``save_pretrained``); ``plmkit tokenizer train -o`` checks the folder first."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self.backend.save(str(out / "tokenizer.json"))
        if self.kind in ("wordpiece", "bpe"):
            self.backend.model.save(str(out))
        specials = {f"{role}_token": tok for role, tok in self.special_tokens.items()}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "do_lower_case": self.lowercase,
                  "clean_up_tokenization_spaces": False, "padding_side": self.padding_side,
                  "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
                  "plmkit_kind": self.kind, **specials}
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        _write_json(out / "tokenizer_config.json", config)
        _write_json(out / "special_tokens_map.json", specials)
        return out

    # ---- training ---------------------------------------------------------------------------
    @classmethod
    def train(cls, files_or_iter: str | os.PathLike | Iterable[str | os.PathLike], kind: str = "wordpiece",
              vocab_size: int = 30000, lowercase: bool | None = None, min_frequency: int = 2,
              special_tokens: Sequence[str] | None = None, style: str | None = None,
              field_name: str | None = None, limit_alphabet: int | None = None,
              show_progress: bool = False) -> Tokenizer:
        """Train a tokenizer on text files or on an iterable of texts.

        ``files_or_iter``: a path (file, folder or glob), a list of `os.PathLike` or of existing
        file paths, or any other iterable of texts (a list of strings that are not all existing
        files is taken as texts). Files are read by `plmkit.data.corpus.Corpus`: .txt lines, .gz,
        .jsonl/.json field or .tsv/.csv/.parquet column ``field_name`` (default: found by its
        name, see `plmkit.data.io.TEXT_COLUMNS`).
        ``kind``: "wordpiece" (style "bert") or "bpe" (style "gpt2", the default, or "roberta").
        ``lowercase`` defaults to True for WordPiece, False for BPE. ``special_tokens`` replaces
        the style's list (roles are found by name; the rest become extra special tokens).
        WordPiece keeps every character of the corpus (or the ``limit_alphabet`` most frequent),
        so a corpus with more distinct characters than ``vocab_size`` gives a larger vocabulary
        (with a warning).
        """
        _check_choice("kind", kind, ("wordpiece", "bpe"))
        style = style or ("bert" if kind == "wordpiece" else "gpt2")
        _check_choice("style", style, ("bert",) if kind == "wordpiece" else ("gpt2", "roberta"))
        if not isinstance(vocab_size, int) or vocab_size <= 0:
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        lowercase = (kind == "wordpiece") if lowercase is None else lowercase
        roles = {"bert": BERT_SPECIALS, "gpt2": GPT2_SPECIALS, "roberta": ROBERTA_SPECIALS}[style]
        tokens = list(dict.fromkeys(roles.values()) if special_tokens is None else special_tokens)
        roles = _guess_roles(tokens) if special_tokens is not None else roles
        options = dict(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=tokens,
                       show_progress=show_progress)
        if kind == "wordpiece":
            backend = _RustTokenizer(models.WordPiece(unk_token=roles.get("unk", "[UNK]")))
            if limit_alphabet is not None:
                options["limit_alphabet"] = limit_alphabet
            trainer = trainers.WordPieceTrainer(continuing_subword_prefix="##", **options)
        else:
            backend = _RustTokenizer(models.BPE())
            trainer = trainers.BpeTrainer(initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **options)
        _set_pipeline(backend, style, lowercase, roles)
        texts = _training_texts(files_or_iter, field_name)
        first = next(texts, None)
        if first is None:
            raise ValueError("no training text: the files or iterable held no non-blank text")
        backend.train_from_iterator(itertools.chain([first], texts), trainer=trainer)
        if backend.get_vocab_size() > vocab_size:
            warnings.warn(f"the corpus alphabet makes the vocabulary {backend.get_vocab_size()} > vocab_size "
                          f"{vocab_size}; pass limit_alphabet or a larger vocab_size", stacklevel=2)
        _set_pipeline(backend, style, lowercase, roles)  # the template needs the final ids
        return cls(backend, kind, roles, lowercase=lowercase)


# ---- identity -------------------------------------------------------------------------------
def _merges(tokenizer: Tokenizer) -> list[str]:
    model = json.loads(tokenizer.backend.to_str()).get("model", {})
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", None) or []]


def vocabulary_digest(tokenizer: Tokenizer) -> str:
    """sha256 of what decides the ids: tokens and ids, BPE merges, special-token roles, casing."""
    payload = json.dumps([sorted(tokenizer.get_vocab().items()), _merges(tokenizer),
                          sorted(tokenizer.special_tokens.items()), tokenizer.lowercase], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def tokenizer_differences(a: Tokenizer, b: Tokenizer) -> list[str]:
    """How `b` would give other ids than `a`, in words (empty when they agree)."""
    found = []
    va, vb = a.get_vocab(), b.get_vocab()
    if len(va) != len(vb):
        found.append(f"vocabulary size {len(va)} vs {len(vb)}")
    moved = sorted((i, t) for t, i in va.items() if vb.get(t) != i)
    if moved:
        examples = ", ".join(f"{t!r} is {i} vs {vb.get(t)}" for i, t in moved[:3])
        found.append(f"{len(moved)} of {len(va)} tokens have another id or are missing ({examples})")
    elif _merges(a) != _merges(b):
        found.append("the BPE merges differ")
    if a.special_tokens != b.special_tokens:
        found.append(f"special tokens {a.special_tokens} vs {b.special_tokens}")
    if a.lowercase != b.lowercase:
        found.append(f"lowercasing {a.lowercase} vs {b.lowercase}")
    return found


# ---- pipelines ------------------------------------------------------------------------------
def _set_pipeline(backend: _RustTokenizer, style: str, lowercase: bool, roles: dict[str, str]) -> None:
    """Install normalizer, pre-tokenizer, post-processor and decoder of a style; register specials."""
    present = [t for t in dict.fromkeys(roles.values()) if backend.token_to_id(t) is not None]
    lstrip = roles.get("mask") if style == "roberta" else None  # "<mask>" takes the space before it
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=t == lstrip) for t in present])

    def tid(role: str) -> int | None:
        return backend.token_to_id(roles[role]) if role in roles else None

    if style == "bert":
        backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                        strip_accents=None, lowercase=lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        cls_, sep = roles.get("cls"), roles.get("sep")
        if tid("cls") is not None and tid("sep") is not None:
            backend.post_processor = processors.TemplateProcessing(
                single=f"{cls_}:0 $A:0 {sep}:0", pair=f"{cls_}:0 $A:0 {sep}:0 $B:1 {sep}:1",
                special_tokens=[(cls_, tid("cls")), (sep, tid("sep"))])
        return
    backend.normalizer = normalizers.Lowercase() if lowercase else None
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if style == "roberta" and tid("cls") is not None and tid("sep") is not None:
        backend.post_processor = processors.RobertaProcessing(
            (roles["sep"], tid("sep")), (roles["cls"], tid("cls")), trim_offsets=True, add_prefix_space=False)
    else:
        backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")


def _guess_roles(tokens: Iterable[str]) -> dict[str, str]:
    """Roles of well-known special token names found in ``tokens`` (first name that matches)."""
    present = set(tokens)
    roles = {}
    for role, names in _ROLE_NAMES.items():
        found = next((n for n in names if n in present), None)
        if found is not None:
            roles[role] = found
    if roles.get("cls") == "[CLS]":  # a BERT vocabulary: <s> / </s> there are not bos / eos
        roles = {r: t for r, t in roles.items() if r not in ("bos", "eos")}
    return roles


def _is_cased(tokens: Iterable[str]) -> bool:
    """True when some plain token starts with a letter that lowercasing changes."""
    for token in tokens:
        if token[:1] in "[<" and token[-1:] in "]>":
            continue
        first = token.removeprefix("##")[:1]
        if first and first.lower() != first:
            return True
    return False


# ---- loaders --------------------------------------------------------------------------------
def _from_vocab_txt(path: Path, lowercase: bool | None) -> Tokenizer:
    """A BERT vocab.txt: one token per line, split on "\\n" only (entries may be U+2028)."""
    text = _read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab = {line.removesuffix("\r"): i for i, line in enumerate(lines)}  # later duplicates win, like HF
    if not vocab:
        raise ValueError(f"{path}: empty vocabulary file")
    roles = _guess_roles(vocab)
    if "unk" not in roles:
        raise ValueError(f"{path}: a WordPiece vocabulary needs an unknown token ([UNK]); none found")
    if lowercase is None:
        lowercase = not _is_cased(vocab)
    backend = _RustTokenizer(models.WordPiece(vocab, unk_token=roles["unk"], max_input_chars_per_word=100))
    _set_pipeline(backend, "bert", lowercase, roles)
    return Tokenizer(backend, "wordpiece", roles, lowercase=lowercase)


def _from_bpe_files(vocab_path: Path, merges_path: Path) -> Tokenizer:
    """A GPT-2 style vocab.json + merges.txt pair; RoBERTa specials (<s>, </s>) pick that style."""
    vocab = _read_json(vocab_path)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ValueError(f"{vocab_path}: expected a JSON object mapping tokens to integer ids")
    merges = []
    for lineno, line in enumerate(_read_text(merges_path).split("\n"), start=1):
        if not line.strip() or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.rstrip("\r").split(" ")
        if len(parts) != 2:
            raise ValueError(f"{merges_path}: line {lineno}: expected two tokens separated by a space, got {line!r}")
        merges.append((parts[0], parts[1]))
    try:
        backend = _RustTokenizer(models.BPE(vocab, merges))
    except Exception as e:  # tokenizers raises a bare Exception
        raise ValueError(f"{vocab_path} + {merges_path}: inconsistent BPE files: {e}") from e
    style = "roberta" if "<s>" in vocab and "</s>" in vocab else "gpt2"
    roles = ROBERTA_SPECIALS if style == "roberta" else GPT2_SPECIALS
    roles = {r: t for r, t in roles.items() if t in vocab}
    _set_pipeline(backend, style, False, roles)
    return Tokenizer(backend, "bpe", roles)


def _from_tokenizer_json(path: Path) -> Tokenizer:
    """A tokenizers serialization; roles, lowercasing and limits come from tokenizer_config.json /
    special_tokens_map.json beside it when present, else from well-known token names."""
    try:
        backend = _RustTokenizer.from_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a valid tokenizer.json: {e}") from e
    backend.no_truncation()
    backend.no_padding()
    data = _read_json(path)
    kind = _MODEL_KINDS.get(data["model"].get("type"), str(data["model"].get("type", "unknown")).lower())
    config = _sidecar_config(path.parent)
    named = {r: config.get(f"{r}_token") for r in ROLES}  # HF writes a str or an AddedToken dict
    named = {r: t.get("content") if isinstance(t, dict) else t for r, t in named.items()}
    roles = {r: t for r, t in named.items() if isinstance(t, str)} or _guess_roles(backend.get_vocab())
    lowercase = config.get("do_lower_case")
    if not isinstance(lowercase, bool):
        lowercase = _normalizer_lowercases(data.get("normalizer"))
    max_len = config.get("model_max_length")
    max_len = max_len if isinstance(max_len, int) and 0 < max_len < _HUGE else None
    side = config.get("padding_side") if config.get("padding_side") in ("left", "right") else "right"
    return Tokenizer(backend, kind, roles, lowercase=lowercase, model_max_length=max_len, padding_side=side)


def _normalizer_lowercases(spec: Any) -> bool:
    """Whether a serialized normalizer (possibly a Sequence) lowercases."""
    if not isinstance(spec, dict):
        return False
    if spec.get("type") == "Sequence":
        return any(_normalizer_lowercases(n) for n in spec.get("normalizers", []))
    return spec.get("type") == "Lowercase" or (spec.get("type") == "BertNormalizer" and bool(spec.get("lowercase")))


def _sidecar_config(folder: Path) -> dict[str, Any]:
    """special_tokens_map.json overlaid with tokenizer_config.json (either may be absent)."""
    merged: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            data = _read_json(folder / name)
            if not isinstance(data, dict):
                raise ValueError(f"{folder / name}: expected a JSON object")
            merged.update(data)
    return merged


def _merges_path(vocab_path: Path, merges: str | os.PathLike | None) -> Path:
    sibling = vocab_path.with_name(vocab_path.name.replace("vocab", "merges").replace(".json", ".txt"))
    candidates = [Path(merges)] if merges is not None else [sibling, vocab_path.with_name("merges.txt")]
    found = next((c for c in candidates if c.is_file()), None)
    if found is not None:
        return found
    raise FileNotFoundError(f"{candidates[0]}: merges file not found (needed with BPE vocabulary {vocab_path})")


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read: {e.strerror}") from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not UTF-8 text (byte offset {e.start})") from e


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from e


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# ---- small helpers --------------------------------------------------------------------------
def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _truncation_strategy(truncation: bool | str, has_pair: bool) -> str | None:
    if truncation is False or truncation is None:
        return None
    strategy = "longest_first" if truncation is True else truncation
    _check_choice("truncation", strategy, ("longest_first", "only_second"))
    if strategy == "only_second" and not has_pair:
        raise ValueError("truncation='only_second' needs text pairs")
    return strategy


def _padding_length(padding: bool | str, max_length: int | None) -> int | None | bool:
    """False (no padding), None (pad to the longest) or a fixed length."""
    if padding is False or padding is None or padding == "do_not_pad":
        return False
    if padding is True or padding == "longest":
        return None
    _check_choice("padding", padding, (True, False, "longest", "max_length"))
    if max_length is None:
        raise ValueError("padding='max_length' needs max_length")
    return max_length


def _run(fn: Any) -> Any:
    """Call the backend, turning its bare Exceptions (e.g. impossible truncation) into ValueError."""
    try:
        return fn()
    except (TypeError, ValueError):
        raise
    except Exception as e:
        raise ValueError(str(e)) from e


def _int_list(ids: Iterable[int]) -> list[int]:
    return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


# ---- text sources ---------------------------------------------------------------------------
def _training_texts(source: Any, field_name: str | None) -> Iterator[str]:
    """Texts from a path, a list of paths, or an iterable of texts (see `Tokenizer.train`)."""
    def is_file(s: Any) -> bool:
        return isinstance(s, os.PathLike) or (isinstance(s, str) and "\n" not in s and len(s) < 4096
                                              and Path(s).is_file())

    if isinstance(source, (str, os.PathLike)) or (isinstance(source, (list, tuple)) and source
                                                  and all(map(is_file, source))):
        texts = _file_lines(source, field_name)
    else:
        texts = (t for t in source if isinstance(t, str) and t.strip())
    return (piece for text in texts for piece in bounded_pieces(text, _PIECE_CHARS))


def bounded_pieces(text: str, limit: int) -> Iterator[str]:
    """`text` in pieces of at most `limit` characters whose concatenation is `text`.

    Each cut falls just before a whitespace character (the piece after it starts with that
    space, as the pre-tokenizers expect of a following word), or anywhere in a stretch of
    `limit` characters without whitespace.
    """
    start, end = 0, len(text)
    while end - start > limit:
        stop = start + limit
        cut = max(text.rfind(space, start + 1, stop + 1) for space in _SPACES)
        cut = cut if cut > start else stop
        yield text[start:cut]
        start = cut
    yield text[start:]


def _file_lines(paths: Any, field_name: str | None) -> Iterator[str]:
    """The sentences (lines) of a corpus read by `plmkit.data.io.Corpus`."""
    from plmkit.data.io import Corpus

    corpus = Corpus(paths if isinstance(paths, (list, tuple)) else [paths], field=field_name)
    return (sentence for doc in corpus for sentence in doc if sentence.strip())
