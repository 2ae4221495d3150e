"""Text-to-text pairs (summarization, translation) and their features for two model shapes.

- Encoder-decoder: ``input_ids`` = the tokenized source (with the tokenizer's special
  tokens), ``labels`` = target tokens + EOS; the model shifts labels right to get its
  decoder inputs.
- Decoder-only (GPT): one sequence ``prompt + target + EOS`` where the prompt is the source
  followed by a separator; ``labels`` repeat ``input_ids`` with -100 on the prompt, so the
  loss covers the target (and its EOS) only. `causal_lm_prompt` builds the same prompt for
  generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plmkit.data.tasks.features import IGNORE_INDEX, TokenizerLike, special_id, truncating_backend
from plmkit.data.io import Column, TableFormat, read_table, text_lines
from plmkit.errors import DataError


@dataclass(frozen=True)
class Seq2SeqExample:
    """A source text and one or more reference targets (the first is the training target)."""

    source: str
    references: tuple[str, ...]
    where: str = field(default="", compare=False)
    """``file:line`` of the record."""

    @property
    def target(self) -> str:
        return self.references[0]


def read_seq2seq_jsonl(
    path: str | Path, source_field: str, target_fields: str | Sequence[str], *, join: str = " ",
) -> list[Seq2SeqExample]:
    """Read JSON Lines; several target fields, or a list-valued one, give several references.

    A list-valued source (SciTLDR's abstract sentences) is joined with `join`. Example:
    SciTLDR ``read_seq2seq_jsonl(p, "source", "target")``; DialogSum test
    ``read_seq2seq_jsonl(p, "dialogue", ["summary1", "summary2", "summary3"])``.
    """
    targets = [target_fields] if isinstance(target_fields, str) else list(target_fields)
    examples = []
    for line, values in read_table(path, [source_field, *targets], fmt="jsonl"):
        source = _joined(path, line, source_field, values[0], join)
        references = [r for name, value in zip(targets, values[1:]) for r in _texts(path, line, name, value)]
        if not references:
            raise DataError(path, line, f"no reference text in {targets}")
        examples.append(Seq2SeqExample(source, tuple(references), f"{path}:{line}"))
    return examples


def _joined(path: str | Path, line: int, name: str, value: Any, join: str) -> str:
    return join.join(_texts(path, line, name, value))


def _texts(path: str | Path, line: int, name: str, value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        raise DataError(path, line, f"field {name!r} must be text or a list of texts")
    return [item.strip() for item in items]


def read_seq2seq_table(
    path: str | Path,
    source_column: Column = 0,
    target_column: Column = 1,
    *,
    fmt: TableFormat | None = None,
    header: bool = False,
    column_names: Sequence[str] | None = None,
) -> list[Seq2SeqExample]:
    """Read source/target columns of a TSV or CSV file (CSL: ``read_seq2seq_table(p, 1, 2)``)."""
    rows = read_table(path, [source_column, target_column], fmt=fmt, header=header, column_names=column_names)
    return [Seq2SeqExample(s.strip(), (t.strip(),), f"{path}:{line}") for line, (s, t) in rows]


def read_parallel(source_path: str | Path, target_path: str | Path) -> list[Seq2SeqExample]:
    """Read line-aligned parallel files (plain or ``.gz``): line i of one translates line i of the other."""
    sources = [line for _, line in text_lines(source_path)]
    targets = [line for _, line in text_lines(target_path)]
    if len(sources) != len(targets):
        raise DataError(source_path, None, f"{len(sources)} lines, but {target_path} has {len(targets)}: parallel "
                                           "files must align line by line")
    return [Seq2SeqExample(s.strip(), (t.strip(),), f"{source_path}:{i}")
            for i, (s, t) in enumerate(zip(sources, targets), 1)]


def encode_seq2seq(
    examples: Sequence[Seq2SeqExample],
    tokenizer: TokenizerLike,
    *,
    max_source_length: int = 512,
    max_target_length: int = 128,
    eos_id: int | None = None,
    target_tokenizer: TokenizerLike | None = None,
) -> list[dict[str, Any]]:
    """Features ``input_ids, attention_mask, labels`` for an encoder-decoder.

    Labels are the target's tokens (no special tokens) cut to ``max_target_length - 1``,
    then EOS (`eos_id`, else the target tokenizer's eos, else its sep token).
    `target_tokenizer` tokenizes targets when they use another vocabulary.
    """
    target_tok = target_tokenizer if target_tokenizer is not None else tokenizer
    eos = _eos(target_tok, eos_id)
    sources = truncating_backend(tokenizer, max_source_length).encode_batch([e.source for e in examples])
    targets = truncating_backend(target_tok, None).encode_batch(
        [e.target for e in examples], add_special_tokens=False)
    return [{"input_ids": s.ids, "attention_mask": s.attention_mask,
             "labels": t.ids[: max_target_length - 1] + [eos]} for s, t in zip(sources, targets)]


def _eos(tokenizer: TokenizerLike, eos_id: int | None) -> int:
    if eos_id is None and getattr(tokenizer, "eos_id", None) is None and getattr(tokenizer, "sep_id", None):
        return int(tokenizer.sep_id)  # type: ignore[union-attr]
    return special_id(tokenizer, "eos", eos_id)


def causal_lm_prompt(
    tokenizer: TokenizerLike,
    source: str,
    *,
    max_length: int = 512,
    max_target_length: int = 128,
    separator: str = "\n",
) -> list[int]:
    """Prompt ids ``source + separator`` with the source cut so that a target of up to
    `max_target_length` tokens (EOS included) still fits in `max_length`."""
    return causal_lm_prompts(tokenizer, [source], max_length=max_length,
                             max_target_length=max_target_length, separator=separator)[0]


def causal_lm_prompts(
    tokenizer: TokenizerLike,
    sources: Sequence[str],
    *,
    max_length: int = 512,
    max_target_length: int = 128,
    separator: str = "\n",
) -> list[list[int]]:
    """`causal_lm_prompt` for many sources at once."""
    backend = truncating_backend(tokenizer, None)
    separator_ids = backend.encode(separator, add_special_tokens=False).ids if separator else []
    room = max_length - max_target_length - len(separator_ids)
    if room < 1:
        raise ValueError(f"max_length={max_length} leaves no room for the source beside "
                         f"max_target_length={max_target_length} and the separator")
    encodings = backend.encode_batch(list(sources), add_special_tokens=False)
    return [enc.ids[:room] + separator_ids for enc in encodings]


def encode_causal_lm(
    examples: Sequence[Seq2SeqExample],
    tokenizer: TokenizerLike,
    *,
    max_length: int = 512,
    max_target_length: int = 128,
    separator: str = "\n",
    eos_id: int | None = None,
) -> list[dict[str, Any]]:
    """Features ``input_ids, attention_mask, labels`` of ``prompt + target + EOS`` for a GPT.

    ``labels`` equal ``input_ids`` except -100 over the prompt. The target is cut to
    ``max_target_length - 1`` tokens before EOS; the source to what is left of `max_length`.
    """
    eos = special_id(tokenizer, "eos", eos_id)
    prompts = causal_lm_prompts(tokenizer, [e.source for e in examples], max_length=max_length,
                                max_target_length=max_target_length, separator=separator)
    targets = truncating_backend(tokenizer, None).encode_batch(
        [e.target for e in examples], add_special_tokens=False)
    features = []
    for prompt, target in zip(prompts, targets):
        answer = target.ids[: max_target_length - 1] + [eos]
        features.append({"input_ids": prompt + answer, "attention_mask": [1] * (len(prompt) + len(answer)),
                         "labels": [IGNORE_INDEX] * len(prompt) + answer})
    return features
