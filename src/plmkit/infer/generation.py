"""Text generation: greedy, sampling (temperature, top-k, top-p, min-p), beam search, streaming.

    from plmkit.infer.generation import generate, generate_text, stream_text
    out = generate(model, [[464, 3290], [40]], max_new_tokens=20)        # token lists in, tokens out
    texts = generate_text(model, tok, ["Once upon a time"], top_p=0.9, seed=1)
    for piece in stream_text(model, tok, "Once upon a time"): print(piece, end="")

Works with a causal LM (GPT) and an encoder-decoder (prompts are then the sources). Prompts of
different lengths are batched with padding handled inside (the user never picks a padding
side); each row stops on its own, at a stop token (the model's eos by default), a stop string
(the text is cut right before it) or after max_new_tokens. One prefill runs the prompts into
a pre-allocated KV cache, then each step runs one token. Sampling draws from its own
`torch.Generator` (seeded by `seed`), never from the global RNG.

The ``plmkit generate`` subcommand lives at the end of this module.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor

from plmkit.config import from_dict
from plmkit.infer import control
from plmkit.infer.beam import BeamSettings, beam_search
from plmkit.infer.quantize import DTYPES, prepare_for_inference
from plmkit.infer.sampling import banned_ngram_tokens, repetition_penalty, sample
from plmkit.infer.stepper import Stepper
from plmkit.infer.streaming import Decoder, TextStream
from plmkit.models.base import eval_mode


@dataclass
class GenerationConfig:
    """How to generate. Options given as keyword arguments to `generate` override these fields."""

    max_new_tokens: int = 64
    """Most new tokens per prompt (a stop token counts)."""
    min_new_tokens: int = 0
    """Stop token ids cannot be generated before this many new tokens (stop strings still apply)."""
    do_sample: bool | None = None
    """True: sample; False: greedy (or beam search). None: sample when temperature > 0 is given or a
    sampling filter (top_k, top_p, min_p) is set, greedy otherwise."""
    temperature: float | None = None
    """Divides the logits before sampling; 0 means greedy. None: 1.0 when sampling."""
    top_k: int | None = None
    """Sample among the k most likely tokens only (None or 0: no limit)."""
    top_p: float | None = None
    """Nucleus: sample among the most likely tokens whose probabilities sum to top_p."""
    min_p: float | None = None
    """Sample among tokens at least min_p times as likely as the most likely one."""
    num_beams: int = 1
    """Beam search with this many beams (deterministic; not combined with sampling)."""
    length_penalty: float = 1.0
    """Beam scores are sum(log p) / new_tokens ** length_penalty (> 0 favours longer outputs)."""
    early_stopping: bool | Literal["never"] = False
    """Beam search stop rule; see `plmkit.infer.beam`."""
    repetition_penalty: float = 1.0
    """> 1 discourages every token already in the prompt or the output (CTRL's penalty)."""
    no_repeat_ngram_size: int = 0
    """> 0: no n-gram of this size occurs twice in prompt + output."""
    stop_token_ids: list[int] | None = None
    """Tokens that end a row (kept as its last token). None: the model's eos token."""
    stop_strings: list[str] = field(default_factory=list)
    """Texts that end a row; its text is cut right before the first one (needs a tokenizer)."""
    seed: int | None = None
    """Seed of this call's own random generator (sampling); None: a fresh random seed. The same
    prompts, batched the same way, with the same seed give the same output."""
    dtype: Literal["fp32", "bf16", "int8", "int4"] | None = None
    """Convert the model's weights in place before generating (see `plmkit.infer.quantize`); None: as they are."""
    compile: bool = False
    """Run the one-token decode step through torch.compile (slow first call)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def sampling(self) -> bool:
        """Whether tokens are sampled (else chosen greedily or by beam search)."""
        if self.temperature == 0 or self.num_beams > 1:
            return False
        if self.do_sample is not None:
            return self.do_sample
        filters = (self.top_k or 0) > 0 or self.top_p is not None or self.min_p is not None
        return filters or self.temperature is not None

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range."""
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
            ("min_new_tokens", 0 <= self.min_new_tokens <= self.max_new_tokens, "in [0, max_new_tokens]"),
            ("temperature", self.temperature is None or self.temperature >= 0, ">= 0"),
            ("top_k", self.top_k is None or self.top_k >= 0, ">= 0"),
            ("top_p", self.top_p is None or 0 < self.top_p <= 1, "in (0, 1]"),
            ("min_p", self.min_p is None or 0 <= self.min_p <= 1, "in [0, 1]"),
            ("num_beams", self.num_beams >= 1, ">= 1"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("no_repeat_ngram_size", self.no_repeat_ngram_size >= 0, ">= 0"),
            ("early_stopping", self.early_stopping in (True, False, "never"), "true, false or 'never'"),
            ("dtype", self.dtype is None or self.dtype in DTYPES, f"one of {', '.join(DTYPES)}"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"generation.{name} must be {expected}, got {getattr(self, name)!r}")
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("generation.num_beams > 1 is deterministic beam search; it cannot be combined "
                             "with do_sample=True")


@dataclass
class GenerationOutput:
    """What `generate` returns: one entry per prompt, in prompt order."""

    tokens: list[list[int]]
    """New tokens (a stop token that ended the row is included; nothing after it)."""
    finish_reasons: list[str]
    """"stop_token", "stop_string" or "length"."""
    texts: list[str] | None = None
    """Decoded new text (special tokens skipped, cut before a stop string), when a tokenizer was given."""
    scores: list[float] | None = None
    """Beam search: the length-penalized score of each returned sequence."""


# --------------------------------------------------------------------------- public API


def generate(model, inputs: Tensor | Sequence[Sequence[int]], config: GenerationConfig | None = None, *,
             attention_mask: Tensor | None = None, tokenizer: Decoder | None = None, **options) -> GenerationOutput:
    """Generate continuations of token prompts.

    inputs: a list of token lists (any lengths), or a (B, T) / (T,) tensor whose padding (either
    side) is given by attention_mask (B, T). options: `GenerationConfig` fields, overriding `config`.
    tokenizer: needed for stop strings; when given, the output also has `texts`.
    """
    cfg = _config(config, options)
    run = _Run(model, _prompts(inputs, attention_mask, model.config.vocab_size), cfg, tokenizer)
    with eval_mode(model), torch.inference_mode():
        return run.beam() if cfg.num_beams > 1 else run.sample()


def generate_text(model, tokenizer, prompts: Sequence[str], config: GenerationConfig | None = None,
                  **options) -> list[str]:
    """The generated continuation (decoder) or output (encoder-decoder) text of each prompt."""
    if isinstance(prompts, str):
        raise ValueError("generate_text takes a list of prompts; wrap a single prompt in a list")
    ids = [encode_prompt(model, tokenizer, p) for p in prompts]
    if not ids:
        return []
    out = generate(model, ids, config, tokenizer=tokenizer, **options)
    return out.texts or []


def stream_text(model, tokenizer, prompt: str, config: GenerationConfig | None = None,
                **options) -> Generator[str, None, GenerationOutput]:
    """Yield the generated text of one prompt piece by piece as it is decoded (greedy or sampling).

    No piece splits a character; their concatenation equals `generate_text(...)[0]`. The
    generator's return value (``StopIteration.value``) is the `GenerationOutput` (tokens, finish reason).
    """
    cfg = _config(config, options)
    if cfg.num_beams > 1:
        raise ValueError("streaming needs greedy decoding or sampling (num_beams=1)")
    run = _Run(model, [encode_prompt(model, tokenizer, prompt)], cfg, tokenizer, force_text=True)
    with eval_mode(model):
        yield from (text for _, text in run.texts() if text)
    return run.output


def encode_prompt(model, tokenizer, text: str) -> list[int]:
    """Prompt ids: a source with special tokens (encoder-decoder) or the bare text (decoder);
    an empty decoder prompt starts from the bos (or eos) token."""
    if model.config.arch == "encoder-decoder":
        return list(tokenizer.encode(text).ids)
    ids = list(tokenizer.encode(text, add_special_tokens=False).ids)
    if not ids:
        start = model.config.bos_token_id if model.config.bos_token_id is not None else model.config.eos_token_id
        if start is None:
            raise ValueError("the prompt is empty and the model has no bos or eos token to start from")
        ids = [start]
    return ids


# --------------------------------------------------------------------------- one call


class _Run:
    """One generate call: the model, its prompts, the resolved options."""

    def __init__(self, model, prompts: list[list[int]], cfg: GenerationConfig, tokenizer: Decoder | None,
                 force_text: bool = False) -> None:
        if model.task not in ("causal-lm", "seq2seq-lm"):
            raise ValueError(f"generation needs a causal-lm or seq2seq-lm model, got a {model.task} model")
        if cfg.stop_strings and tokenizer is None:
            raise ValueError("stop_strings need a tokenizer (pass tokenizer=...)")
        if cfg.dtype is not None:
            prepare_for_inference(model, cfg.dtype)
        self.model, self.prompts, self.cfg, self.tokenizer = model, prompts, cfg, tokenizer
        self.stop_ids = _stop_ids(model, cfg)
        self.streaming = tokenizer is not None and (force_text or bool(cfg.stop_strings))
        self.pad_id = model.config.pad_token_id

    def process(self, stepper: Stepper, logits: Tensor, n: int) -> Tensor:
        """Penalties, no-repeat n-grams and min-new-tokens applied to logits (B, V) at new token n.

        Called once per decode step (sampling and beam search): also a cancellation checkpoint."""
        control.checkpoint()
        cfg = self.cfg
        logits = logits.float()
        if cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size:
            history, valid = stepper.history()
        if cfg.repetition_penalty != 1.0:
            seen = torch.zeros(logits.size(0), logits.size(1) + 1, dtype=torch.bool, device=logits.device)
            seen.scatter_(1, history.masked_fill(~valid, logits.size(1)), True)
            logits = repetition_penalty(logits, seen[:, :-1], cfg.repetition_penalty)
        if cfg.no_repeat_ngram_size:
            banned = banned_ngram_tokens(history, valid, cfg.no_repeat_ngram_size, logits.size(1))
            logits = logits.masked_fill(banned, float("-inf"))
        if n < cfg.min_new_tokens and self.stop_ids:
            logits[:, self.stop_ids] = float("-inf")
        return logits

    # ---- greedy / sampling -------------------------------------------------------------------
    def sample(self) -> GenerationOutput:
        for _ in self.texts():
            pass
        return self.output

    def texts(self) -> Iterator[tuple[int, str]]:
        """Run greedy/sampling decoding; yields (row, new text) as rows produce text (when streaming)."""
        with torch.inference_mode():
            state = _SamplingState(self)
        streams = [TextStream(self.tokenizer, self.cfg.stop_strings) for _ in self.prompts] if self.streaming else []
        while True:
            with torch.inference_mode():
                tokens = state.next()
            if tokens is None:
                break
            if streams:
                yield from self._stream_step(streams, state, tokens.tolist())
        for row, stream in enumerate(streams):
            yield row, stream.finish()
        self.output = state.output(streams, self.tokenizer)
        control.report_tokens(sum(len(t) for t in self.output.tokens))

    def _stream_step(self, streams: list[TextStream], state: _SamplingState, tokens: list[int]) -> Iterator[tuple[int, str]]:
        for row, (stream, token) in enumerate(zip(streams, tokens)):
            if not state.active[row]:
                continue
            text = stream.add([token])
            if stream.stopped:
                state.stop_row(row)
            yield row, text

    # ---- beam search -------------------------------------------------------------------------
    def beam(self) -> GenerationOutput:
        cfg = self.cfg
        stepper = Stepper(self.model, self.prompts, cfg.max_new_tokens, cfg.compile)
        settings = BeamSettings(cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty, cfg.early_stopping)
        stop = set(self.stop_ids)
        finder = _StopFinder(self.tokenizer, cfg.stop_strings)
        results = beam_search(stepper, settings, lambda lp, n: self.process(stepper, lp, n),
                              lambda toks: toks[-1] in stop or finder.found(toks))
        tokens = [hyps.items[0][1] for hyps in results]
        texts = None if self.tokenizer is None else [finder.cut(t) for t in tokens]
        reasons = [_reason(t, stop, finder) for t in tokens]
        control.report_tokens(sum(len(t) for t in tokens))
        return GenerationOutput(tokens, reasons, texts, [hyps.items[0][0] for hyps in results])


class _SamplingState:
    """Greedy/sampling decoding of a batch, one `next()` per new token; rows finish on their own."""

    def __init__(self, run: _Run) -> None:
        cfg = run.cfg
        self.run, self.cfg = run, cfg
        self.stepper = Stepper(run.model, run.prompts, cfg.max_new_tokens, cfg.compile)
        device, b = self.stepper.device, self.stepper.batch_size
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        self.stop = torch.tensor(run.stop_ids, dtype=torch.long, device=device)
        self.finished = torch.zeros(b, dtype=torch.bool, device=device)
        self.new = torch.full((b, cfg.max_new_tokens), run.pad_id, dtype=torch.long, device=device)
        self.count = torch.zeros(b, dtype=torch.long, device=device)
        self.n = 0
        self.logits: Tensor | None = None
        self.active = [True] * b  # rows producing a real token this step (host copy, when streaming)
        self.stopped_by_string = [False] * b
        # Checking "all rows finished" reads the device; on an accelerator do it every few steps.
        self.check_every = 1 if device.type == "cpu" or run.streaming else 8

    def next(self) -> Tensor | None:
        """The next token of every row (B,) (pad for finished rows), or None when all are done."""
        if self.n == self.cfg.max_new_tokens:
            return None
        if self.n > 0 and self.n % self.check_every == 0 and bool(self.finished.all()):
            return None
        if self.logits is None:
            self.logits = self.stepper.prefill()
        else:
            self.logits = self.stepper.step(self.new[:, self.n - 1])
        tokens = self._choose(self.run.process(self.stepper, self.logits, self.n))
        tokens = torch.where(self.finished, self.run.pad_id, tokens)
        if self.run.streaming:
            self.active = (~self.finished).tolist()
        self.count += (~self.finished).long()
        self.new[:, self.n] = tokens
        if self.stop.numel():
            self.finished |= torch.isin(tokens, self.stop)
        self.n += 1
        return tokens

    def stop_row(self, row: int) -> None:
        """A stop string ended `row` at the token just produced."""
        with torch.inference_mode():
            self.finished[row] = True
        self.stopped_by_string[row] = True

    def _choose(self, logits: Tensor) -> Tensor:
        cfg = self.cfg
        if not cfg.sampling:
            return logits.argmax(dim=-1)
        return sample(logits, self.generator, cfg.temperature or 1.0, cfg.top_k or None, cfg.top_p, cfg.min_p)

    def output(self, streams: list[TextStream], tokenizer: Decoder | None) -> GenerationOutput:
        counts = self.count.tolist()
        tokens = [row[:c] for row, c in zip(self.new.tolist(), counts)]
        stop = set(self.run.stop_ids)
        reasons = ["stop_string" if s else "stop_token" if t and t[-1] in stop else "length"
                   for t, s in zip(tokens, self.stopped_by_string)]
        if streams:
            texts = [s.text for s in streams]
        elif tokenizer is not None:
            texts = [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
        else:
            texts = None
        return GenerationOutput(tokens, reasons, texts)


# --------------------------------------------------------------------------- helpers


def _config(config: GenerationConfig | None, options: dict) -> GenerationConfig:
    """`config` with `options` (field names) applied; unknown names and wrong types raise ValueError."""
    base = asdict(config) if config is not None else {}
    return from_dict(GenerationConfig, {**base, **options}, "generation")


def _prompts(inputs: Tensor | Sequence[Sequence[int]], attention_mask: Tensor | None, vocab_size: int) -> list[list[int]]:
    """Token lists without padding from a list of lists or a (B, T) / (T,) tensor (+ attention mask)."""
    if isinstance(inputs, Tensor):
        ids = inputs if inputs.dim() == 2 else inputs[None]
        mask = attention_mask if attention_mask is not None else torch.ones_like(ids)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask {tuple(mask.shape)} does not match inputs {tuple(ids.shape)}")
        prompts = [row[m.bool()].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
    else:
        prompts = [[int(t) for t in p] for p in inputs]
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty; start it with at least one token (e.g. the bos token)")
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {vocab_size})")
    return prompts


def _stop_ids(model, cfg: GenerationConfig) -> list[int]:
    if cfg.stop_token_ids is not None:
        return list(cfg.stop_token_ids)
    eos = model.config.eos_token_id
    return [] if eos is None else [eos]


class _StopFinder:
    """Stop strings in the text of complete token lists (beam search), and the cut text."""

    def __init__(self, tokenizer: Decoder | None, stop_strings: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = [s for s in stop_strings if s]
        # A token adds at least one byte of text, so a stop string lies within its byte length
        # (+1 for a character begun by an earlier token) of the last tokens.
        self.window = max((len(s.encode("utf-8")) for s in self.stop_strings), default=0) + 1

    def found(self, tokens: list[int]) -> bool:
        if not self.stop_strings or self.tokenizer is None:
            return False
        text = self.tokenizer.decode(tokens[-self.window :], skip_special_tokens=True)
        return any(s in text for s in self.stop_strings)

    def cut(self, tokens: list[int]) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)  # type: ignore[union-attr]
        hits = [i for i in (text.find(s) for s in self.stop_strings) if i >= 0]
        return text[: min(hits)] if hits else text


def _reason(tokens: list[int], stop: set[int], finder: _StopFinder) -> str:
    if tokens and tokens[-1] in stop:
        return "stop_token"
    return "stop_string" if finder.found(tokens) else "length"


# --------------------------------------------------------------------------- CLI


def cli_configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="RUN_DIR",
                        help="training run (its best/, else final/, model) or model directory")
    parser.add_argument("prompt", help="the prompt (an encoder-decoder's source text)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="most tokens to generate")
    parser.add_argument("--min-new-tokens", type=int, default=0, help="fewest tokens before end-of-text may come")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature; 0 = greedy (default: greedy, or 1 with --top-k/--top-p/--min-p)")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens (default: all)")
    parser.add_argument("--top-p", type=float, default=None,
                        help="nucleus sampling: the most likely tokens up to this probability mass (default: off)")
    parser.add_argument("--min-p", type=float, default=None,
                        help="drop tokens less likely than this fraction of the top token's probability (default: off)")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search width (1 = no beam search)")
    parser.add_argument("--length-penalty", type=float, default=1.0,
                        help="beam search: > 1 favours longer outputs, < 1 shorter")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="divide the scores of tokens already present by this (1 = off)")
    parser.add_argument("--no-repeat-ngram", type=int, default=0,
                        help="forbid repeating n-grams of this size (0 = off)")
    parser.add_argument("--stop", nargs="+", default=[], metavar="STR", help="stop strings (cut before them)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampling (default: a random one)")
    parser.add_argument("--stream", action="store_true", help="print text as it is generated")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="weights: fp32, bf16, or int8 / int4 (CPU, fastest at batch 1) (default: as saved)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step")


def cli_run(args: argparse.Namespace) -> int:
    from plmkit.data.tokenizer import Tokenizer
    from plmkit.models import load
    from plmkit.rundir import model_dir

    folder = model_dir(args.model_dir)
    model, tokenizer = load(folder), Tokenizer.load(folder)
    cfg = GenerationConfig(
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, num_beams=args.num_beams,
        length_penalty=args.length_penalty, repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram, stop_strings=list(args.stop), seed=args.seed,
        dtype=args.dtype, compile=args.compile)
    echo = model.config.arch == "decoder"  # a decoder continues the prompt: show it first
    if echo:
        sys.stdout.write(args.prompt)
    if args.stream:
        for piece in stream_text(model, tokenizer, args.prompt, cfg):
            sys.stdout.write(piece)
            sys.stdout.flush()
    else:
        sys.stdout.write(generate_text(model, tokenizer, [args.prompt], cfg)[0])
    sys.stdout.write("\n")
    return 0
