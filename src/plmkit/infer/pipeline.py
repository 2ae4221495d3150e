"""Inference pipelines: from raw text to readable results in one call, for every task head.

    clf = pipeline("text-classification", "runs/sst2")
    clf("a gripping, funny film")               # {'label': 'positive', 'score': 0.97}
    clf(["one text", "another"], top_k=2)       # a list of dicts, in input order

Each pipeline turns an input into one or more features (several token windows for a long QA
context), runs them through the model in length-sorted batches (see `plmkit.infer.base`) and
turns the outputs back into one dict per input. Options may be given when the pipeline is
built (defaults) or per call.

Tasks and the heads they need:

=====================  ==========================================================
text-classification    sequence-classification (single texts or pairs)
token-classification   token-classification (BIO/BIOES word tags -> entity spans)
question-answering     question-answering (long contexts in overlapping windows)
fill-mask              masked-lm / pretraining encoder
text-generation        causal-lm decoder (or an encoder-decoder)
summarization          encoder-decoder, or a decoder fine-tuned on ``source\\n target``
translation            as summarization
feature-extraction     any model: mean-pooled (or [CLS]) last hidden states
=====================  ==========================================================
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from plmkit.data.tasks.ner import first_tokens
from plmkit.data.tasks.qa import QAExample, QAFeature, WindowError, encode_qa, rank_answers
from plmkit.data.tasks.seq2seq import causal_lm_prompts
from plmkit.infer.base import (
    Feature, InputError, Pipeline, as_text, as_text_pair, input_errors, task_for_model, trim_span,
)
from plmkit.infer.batching import eos_id, label_names
from plmkit.rundir import model_dir, pipeline_options, recipe_task

_MASK_SPELLINGS = ("[MASK]", "<mask>")
_CJK = "\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK_GAP = re.compile(f"(?<=[{_CJK}]) +(?=[{_CJK}])")
"""Spaces between two CJK characters, as a WordPiece decoder joins them."""


# --------------------------------------------------------------------------- classification


class TextClassificationPipeline(Pipeline):
    """Label and score of a text or text pair ({"text": ..., "text_pair": ...} or a tuple).

    Scores: softmax (single label), sigmoid (multi-label) or the raw value (regression).
    Result ``{"label", "score"}``; with ``top_k`` > 1 (or None = all) also ``"labels"``, best first.
    """

    task = "text-classification"
    options = {"top_k": 1, "max_length": None}

    @classmethod
    def accepts(cls, model) -> bool:
        return model.task == "sequence-classification"

    @classmethod
    def needs(cls) -> str:
        return "a sequence-classification head"

    def preprocess(self, item: Any, opts: dict[str, Any]) -> list[Feature]:
        text, pair = as_text_pair(item)
        return [self.encode(text, pair, opts["max_length"])]

    def preprocess_batch(self, items: list[Any], opts: dict[str, Any]) -> list[list[Feature]]:
        texts, pairs = [], []
        for i, item in enumerate(items):
            with input_errors(i, len(items)):
                text, pair = as_text_pair(item)
            texts.append(text)
            pairs.append(pair)
        return [[f] for f in self.encode_batch(texts, pairs, opts["max_length"])]

    def forward(self, features: list[Feature], opts: dict[str, Any]) -> list[np.ndarray]:
        logits = self.model(**self.collate(features)).logits.float()  # (B, K)
        if self.config.problem_type == "multi_label":
            scores = torch.sigmoid(logits)
        elif self.config.problem_type == "regression":
            scores = logits
        else:
            scores = logits.softmax(dim=-1)
        return list(scores.cpu().numpy())

    def postprocess(self, item, features, outputs, opts) -> dict[str, Any]:
        scores = outputs[0]
        names = label_names(self.config)
        if self.config.problem_type == "regression":
            return {"label": names[0], "score": float(scores[0])}
        ranked = [{"label": names[i], "score": float(scores[i])} for i in np.argsort(-scores, kind="stable")]
        top_k = opts["top_k"]
        result = dict(ranked[0])
        if top_k is None or top_k > 1:
            result["labels"] = ranked if top_k is None else ranked[:top_k]
        return result


# --------------------------------------------------------------------------- token classification


class TokenClassificationPipeline(Pipeline):
    """Named entities with character offsets into the original text, or one tag per given word.

    A text is split into words by the tokenizer's pre-tokenizer; ``{"words": [...]}`` gives the
    words (a CoNLL sentence). A word takes the prediction of its first piece, as in training.
    For a text, ``aggregation="simple"`` groups BIO/BIOES word tags into entities
    ``{"entity_group", "word", "start", "end", "score"}`` (score: mean word probability);
    ``"none"`` lists words ``{"entity", "word", "start", "end", "score"}``, leaving out
    `ignore_labels`; the result is ``{"entities": [...]}``. For given words the result is
    ``{"tags": [one per word], "scores": [its probability]}``; words beyond `max_length` tokens
    are tagged "O" with score None. Text beyond the model's length is truncated.
    """

    task = "token-classification"
    options = {"aggregation": "simple", "ignore_labels": ("O",), "max_length": None}

    @classmethod
    def accepts(cls, model) -> bool:
        return model.task == "token-classification"

    @classmethod
    def needs(cls) -> str:
        return "a token-classification head"

    def preprocess(self, item: Any, opts: dict[str, Any]) -> list[Feature]:
        return self.preprocess_batch([item], opts)[0]

    def preprocess_batch(self, items: list[Any], opts: dict[str, Any]) -> list[list[Feature]]:
        if opts["aggregation"] not in ("simple", "none"):
            raise ValueError(f"aggregation must be 'simple' or 'none', got {opts['aggregation']!r}")
        parsed = []
        for i, item in enumerate(items):
            with input_errors(i, len(items)):
                parsed.append(_text_or_words(item))
        out: list[list[Feature]] = [[] for _ in items]
        for words in (False, True):
            rows = [i for i, p in enumerate(parsed) if isinstance(p, list) == words]
            if rows:
                for i, f in zip(rows, self.encode_batch([parsed[i] for i in rows], None, opts["max_length"], words)):
                    out[i] = [f]
        return out

    def forward(self, features: list[Feature], opts: dict[str, Any]) -> list[np.ndarray]:
        probs = self.model(**self.collate(features)).logits.float().softmax(dim=-1).cpu().numpy()  # (B, T, K)
        return [p[: len(f.inputs["input_ids"])] for p, f in zip(probs, features)]

    def postprocess(self, item: Any, features, outputs, opts) -> dict[str, Any]:
        names = label_names(self.config)
        if isinstance(item, dict):
            return word_tag_scores(features[0].meta.word_ids, outputs[0], names, len(item["words"]))
        words = word_predictions(item, features[0].meta, outputs[0], names)
        if opts["aggregation"] == "none":
            ignore = set(opts["ignore_labels"] or ())
            return {"entities": [w for w in words if w["entity"] not in ignore]}
        return {"entities": group_entities(item, words)}


def _text_or_words(item: Any) -> str | list[str]:
    """A text, or the word list of ``{"words": [...]}``."""
    if isinstance(item, dict) and set(item) == {"words"}:
        words = item["words"]
        if isinstance(words, (list, tuple)) and words and all(isinstance(w, str) and w.strip() for w in words):
            return list(words)
        raise ValueError(f"expected {{'words': [non-empty texts]}}, got {item!r}")
    return as_text(item)


def word_tag_scores(word_ids: list[int | None], probs: np.ndarray, names: list[str],
                    num_words: int) -> dict[str, list[Any]]:
    """One tag and its probability per word, from the probabilities (T, K) of each word's first
    token; words without tokens (cut off) are "O" with score None."""
    tags: list[str] = ["O"] * num_words
    scores: list[float | None] = [None] * num_words
    for word, token in first_tokens(word_ids).items():
        k = int(probs[token].argmax())
        tags[word], scores[word] = names[k], float(probs[token, k])
    return {"tags": tags, "scores": scores}


def word_predictions(text: str, encoding, probs: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """One entry per word: tag and probability of its first piece, character span of all its pieces.

    probs (T, K) for the tokens of `encoding`; spans are trimmed of surrounding whitespace.
    """
    words: dict[int, dict[str, Any]] = {}
    for word, token in first_tokens(encoding.word_ids).items():
        k = int(probs[token].argmax())
        words[word] = {"entity": names[k], "score": float(probs[token, k]), "start": None, "end": None}
    for word, (start, end) in zip(encoding.word_ids, encoding.offsets):
        if word is not None:
            w = words[word]
            w["start"] = start if w["start"] is None else min(w["start"], start)
            w["end"] = end if w["end"] is None else max(w["end"], end)
    out = []
    for word in sorted(words):
        w = words[word]
        start, end = trim_span(text, w["start"], w["end"])
        if start < end:
            out.append({**w, "word": text[start:end], "start": start, "end": end})
    return out


def group_entities(text: str, words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge word tags (B-/I-/E-/S- + type, or a bare type) into entity spans over `text`."""
    entities: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for w in words:
        prefix, kind = _split_tag(w["entity"])
        if kind is None:
            current = None
            continue
        continues = current is not None and current["entity_group"] == kind and prefix in ("I", "E")
        if not continues:
            current = {"entity_group": kind, "start": w["start"], "end": w["end"], "scores": []}
            entities.append(current)
        current["end"] = w["end"]
        current["scores"].append(w["score"])
        if prefix in ("E", "S"):
            current = None
    return [{"entity_group": e["entity_group"], "word": text[e["start"]: e["end"]], "start": e["start"],
             "end": e["end"], "score": float(np.mean(e["scores"]))} for e in entities]


def _split_tag(tag: str) -> tuple[str, str | None]:
    """("B", "PER") from "B-PER"; ("", None) for "O"; ("I", tag) for a tag without a prefix."""
    if tag == "O":
        return "", None
    prefix, dash, kind = tag.partition("-")
    if dash and prefix in ("B", "I", "E", "S", "M") and kind:
        return ("I" if prefix == "M" else prefix), kind
    return "I", tag


# --------------------------------------------------------------------------- question answering


class QuestionAnsweringPipeline(Pipeline):
    """Extractive QA on ``{"question": ..., "context": ...}`` (or a (question, context) tuple).

    A context too long for one row is cut into windows of `max_length` tokens (at most the
    model's positions) overlapping by `doc_stride` tokens (default: a quarter of a window, at
    most 128); the best span over all windows wins, among the `n_best` starts and ends of each
    window. Result ``{"answer", "start", "end", "score"}`` with ``context[start:end] == answer``
    and score the span probability p(start) * p(end) within its window; with ``top_k`` > 1 also
    ``"answers"``. With `null_threshold` (SQuAD v2) the answer is "" (score 0) when the
    no-answer log-probability log p(start=0) + log p(end=0) beats the best span's by more than it.
    """

    task = "question-answering"
    options = {"top_k": 1, "max_length": 384, "doc_stride": None, "max_question_length": 64,
               "max_answer_length": 30, "n_best": 20, "null_threshold": None}

    @classmethod
    def accepts(cls, model) -> bool:
        return model.task == "question-answering"

    @classmethod
    def needs(cls) -> str:
        return "a question-answering head"

    def preprocess(self, item: Any, opts: dict[str, Any]) -> list[Feature]:
        return self.preprocess_batch([item], opts)[0]

    def preprocess_batch(self, items: list[Any], opts: dict[str, Any]) -> list[list[Feature]]:
        examples = []
        for i, item in enumerate(items):
            with input_errors(i, len(items)):
                question, context = _question_context(item)
            examples.append(QAExample(id=str(i), question=question, context=context))
        length = min(opts["max_length"], self.max_length)
        stride = opts["doc_stride"] if opts["doc_stride"] is not None else min(128, length // 4)
        try:
            windows = encode_qa(examples, self.tokenizer, max_length=length, stride=stride,
                                max_query_length=opts["max_question_length"], with_labels=False)
        except WindowError as e:
            raise InputError(e.example_index, str(e).partition(": ")[2], len(items) > 1) from None
        except ValueError:
            raise
        except Exception as e:  # the Rust tokenizer raises a bare Exception when windows cannot overlap
            raise ValueError(f"cannot cut the context into windows of max_length={length} with "
                             f"doc_stride={stride} beside the question: {e}") from None
        out: list[list[Feature]] = [[] for _ in items]
        for w in windows:
            out[w.example_index].append(Feature(w.inputs, w))
        return out

    def forward(self, features: list[Feature], opts: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        batch = self.collate(features)
        out = self.model(**batch)
        pad = batch["attention_mask"] == 0
        start = out.start_logits.float().masked_fill(pad, -math.inf).log_softmax(dim=-1).cpu().numpy()
        end = out.end_logits.float().masked_fill(pad, -math.inf).log_softmax(dim=-1).cpu().numpy()
        return [(s[: len(f.inputs["input_ids"])], e[: len(f.inputs["input_ids"])])
                for s, e, f in zip(start, end, features)]

    def postprocess(self, item, features, outputs, opts) -> dict[str, Any]:
        _, context = _question_context(item)
        top_k = max(1, opts["top_k"])
        windows: list[QAFeature] = [f.meta for f in features]
        spans = rank_answers(windows, context, [s for s, _ in outputs], [e for _, e in outputs],
                             n_best=max(top_k, opts["n_best"]), max_answer_length=opts["max_answer_length"],
                             null_threshold=opts["null_threshold"], top_k=top_k)
        answers = [{"answer": s.text, "start": s.start, "end": s.end, "score": float(math.exp(s.score))}
                   for s in spans]
        result = dict(answers[0]) if answers else {"answer": "", "start": 0, "end": 0, "score": 0.0}
        if top_k > 1:
            result["answers"] = answers
        return result


def _question_context(item: Any) -> tuple[str, str]:
    if isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, str) for t in item):
        return item
    if isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("context"), str):
        return item["question"], item["context"]
    raise ValueError(f"expected {{'question': ..., 'context': ...}} or a (question, context) tuple, got {item!r}")


# --------------------------------------------------------------------------- fill-mask


class FillMaskPipeline(Pipeline):
    """Top-k tokens for each mask ("[MASK]" or "<mask>", whichever the text uses).

    Result ``{"masks": [{"index": token position, "candidates": [{"token", "token_str",
    "score", "sequence"}]}]}``, one entry per mask, candidates best first; ``sequence`` is the
    text with that mask filled (other masks left as they are).
    """

    task = "fill-mask"
    options = {"top_k": 5, "max_length": None}

    @classmethod
    def accepts(cls, model) -> bool:
        return model.config.arch == "encoder" and model.task in ("masked-lm", "pretraining")

    @classmethod
    def needs(cls) -> str:
        return "an encoder with a masked-lm (or pretraining) head"

    def preprocess(self, item: Any, opts: dict[str, Any]) -> list[Feature]:
        mask_id = self.tokenizer.mask_id
        if mask_id is None:
            raise ValueError("the tokenizer has no mask token")
        text = as_text(item)
        for spelling in _MASK_SPELLINGS:
            text = text.replace(spelling, self.tokenizer.special_tokens["mask"])
        feature = self.encode(text, None, opts["max_length"])
        positions = [t for t, i in enumerate(feature.inputs["input_ids"]) if i == mask_id]
        if not positions:
            raise ValueError(f"no mask token ({' or '.join(_MASK_SPELLINGS)}) in {item!r}")
        feature.meta = positions
        return [feature]

    def forward(self, features: list[Feature], opts: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        logits = self.model(**self.collate(features)).logits  # (B, T, V)
        k = min(opts["top_k"], logits.size(-1))
        results = []
        for row, f in enumerate(features):
            probs = logits[row, f.meta].float().softmax(dim=-1)  # (M, V)
            top = probs.topk(k, dim=-1)
            results.append((top.values.cpu().numpy(), top.indices.cpu().numpy()))
        return results

    def postprocess(self, item, features, outputs, opts) -> dict[str, Any]:
        ids = list(features[0].inputs["input_ids"])
        values, indices = outputs[0]
        masks = []
        for m, position in enumerate(features[0].meta):
            candidates = []
            for score, token in zip(values[m], indices[m]):
                filled = ids[:position] + [int(token)] + ids[position + 1:]
                candidates.append({"token": int(token), "token_str": self.tokenizer.decode([int(token)]),
                                   "score": float(score), "sequence": self._sequence(filled)})
            masks.append({"index": position, "candidates": candidates})
        return {"masks": masks}

    def _sequence(self, ids: list[int]) -> str:
        """Text of ids without special tokens, except that other masks stay visible."""
        keep = {self.tokenizer.mask_id}
        specials = set(self.tokenizer.all_special_ids) - keep
        return self.tokenizer.decode([i for i in ids if i not in specials], skip_special_tokens=False)


# --------------------------------------------------------------------------- feature extraction


class FeatureExtractionPipeline(Pipeline):
    """One vector per text from the last hidden states (the encoder's, for an encoder-decoder).

    ``pooling="mean"`` averages over real tokens (padding excluded), ``"cls"`` takes the first
    token; ``normalize=True`` scales to unit length. Result ``{"embedding": [C floats]}``.
    """

    task = "feature-extraction"
    options = {"pooling": "mean", "normalize": False, "max_length": None}

    def preprocess(self, item: Any, opts: dict[str, Any]) -> list[Feature]:
        if opts["pooling"] not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {opts['pooling']!r}")
        return [self.encode(as_text(item), None, opts["max_length"])]

    def forward(self, features: list[Feature], opts: dict[str, Any]) -> list[np.ndarray]:
        batch = self.collate(features)
        h = self.hidden_states(batch).float()  # (B, T, C)
        mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        if opts["pooling"] == "mean":
            pooled = (h * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B, C)
        else:
            pooled = h[:, 0]
        if opts["normalize"]:
            pooled = F.normalize(pooled, dim=-1)
        return list(pooled.cpu().numpy())

    def hidden_states(self, batch: dict[str, Tensor]) -> Tensor:
        """Last-layer hidden states (B, T, C) without running any output head."""
        if self.config.arch == "encoder-decoder":
            return self.model.encode(batch["input_ids"], batch["attention_mask"])
        if self.config.arch == "encoder":
            return self.model.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return self.model.transformer(batch["input_ids"], batch["attention_mask"])

    def postprocess(self, item, features, outputs, opts) -> dict[str, Any]:
        return {"embedding": [float(x) for x in outputs[0]]}


# --------------------------------------------------------------------------- generation


class TextGenerationPipeline(Pipeline):
    """Continue a prompt. Options other than ``return_full_text`` are `GenerationConfig` fields
    (max_new_tokens, do_sample, temperature, top_k, top_p, num_beams, stop_strings, seed, ...).

    Result ``{"generated_text", "finish_reason"}``: prompt + continuation (with
    ``return_full_text=False`` the continuation only; an encoder-decoder's output never
    includes its input). finish_reason is "stop_token", "stop_string" or "length".
    """

    task = "text-generation"
    options = {"return_full_text": True}
    free_options = True
    result_key = "generated_text"

    @classmethod
    def accepts(cls, model) -> bool:
        return model.task in ("causal-lm", "seq2seq-lm") or (
            model.task == "pretraining" and model.config.arch != "encoder")

    @classmethod
    def needs(cls) -> str:
        return "a causal-lm decoder or an encoder-decoder"

    def preprocess(self, item: Any, opts: dict[str, Any]) -> list[Feature]:
        from plmkit.infer.generation import encode_prompt

        return [Feature({"input_ids": encode_prompt(self.model, self.tokenizer, as_text(item))})]

    def forward(self, features: list[Feature], opts: dict[str, Any]) -> list[tuple[str, str]]:
        from plmkit.infer.generation import generate

        options = {k: v for k, v in opts.items() if k not in self.options}
        try:
            out = generate(self.model, [f.inputs["input_ids"] for f in features], tokenizer=self.tokenizer, **options)
        except TypeError as e:
            raise ValueError(f"{self.task}: bad generation option: {e}") from None
        return list(zip(out.texts or [], out.finish_reasons))

    def postprocess(self, item, features, outputs, opts) -> dict[str, Any]:
        text, reason = outputs[0]
        if opts.get("return_full_text") and self.config.arch != "encoder-decoder":
            text = item + text
        return {self.result_key: text, "finish_reason": reason}


class SummarizationPipeline(TextGenerationPipeline):
    """Summarize a text: an encoder-decoder maps source -> summary; a decoder fine-tuned on
    ``source + separator + target`` continues the prompt ``source + separator``.

    The source is cut to `max_source_length` tokens (default: what the model holds; for a decoder
    less the new tokens and the separator); `max_new_tokens` is capped at what the model's positions
    hold. Generation stops at the eos token the model was
    fine-tuned with (the model's, else the tokenizer's). Spaces a WordPiece decoder puts between
    CJK characters are dropped. Result ``{"summary_text", "finish_reason"}``.
    """

    task = "summarization"
    options = {"max_source_length": None, "separator": "\n"}
    result_key = "summary_text"

    def preprocess(self, item: Any, opts: dict[str, Any]) -> list[Feature]:
        return self.preprocess_batch([item], opts)[0]

    def preprocess_batch(self, items: list[Any], opts: dict[str, Any]) -> list[list[Feature]]:
        texts = []
        for i, item in enumerate(items):
            with input_errors(i, len(items)):
                texts.append(as_text(item))
        return [[Feature({"input_ids": ids})] for ids in self.prompts(texts, opts)]

    def prompts(self, texts: list[str], opts: dict[str, Any]) -> list[list[int]]:
        """Generation inputs: the sources (encoder-decoder) or ``source + separator`` (decoder)."""
        limit = self.max_length
        source = min(opts["max_source_length"] or limit, limit)
        if self.config.arch == "encoder-decoder":
            return [enc.ids for enc in self.tokenizer.encode_batch(texts, max_length=source)]
        new_tokens = self.new_tokens(opts)
        total = min(source + new_tokens, limit) if opts["max_source_length"] else limit
        return causal_lm_prompts(self.tokenizer, texts, max_length=total, max_target_length=new_tokens,
                                 separator=opts["separator"])

    def new_tokens(self, opts: dict[str, Any]) -> int:
        """max_new_tokens, at most what the model's positions hold beside a one-token start."""
        from plmkit.infer.generation import GenerationConfig

        return min(int(opts.get("max_new_tokens") or GenerationConfig.max_new_tokens), self.max_length - 1)

    def forward(self, features: list[Feature], opts: dict[str, Any]) -> list[tuple[str, str]]:
        opts = {**opts, "max_new_tokens": self.new_tokens(opts)}
        if opts.get("stop_token_ids") is None:
            eos = eos_id(self.tokenizer, self.config)
            opts["stop_token_ids"] = [] if eos is None else [eos]
        return super().forward(features, opts)

    def postprocess(self, item, features, outputs, opts) -> dict[str, Any]:
        text, reason = outputs[0]
        return {self.result_key: _CJK_GAP.sub("", text.strip()), "finish_reason": reason}


class TranslationPipeline(SummarizationPipeline):
    """Translate a text with a model fine-tuned for one direction. Result ``{"translation_text", "finish_reason"}``."""

    task = "translation"
    result_key = "translation_text"


# --------------------------------------------------------------------------- factory

PIPELINES: dict[str, type[Pipeline]] = {
    cls.task: cls for cls in (
        TextClassificationPipeline, TokenClassificationPipeline, QuestionAnsweringPipeline, FillMaskPipeline,
        FeatureExtractionPipeline, TextGenerationPipeline, SummarizationPipeline, TranslationPipeline)
}

def pipeline(task: str, model, tokenizer=None, device: str | torch.device | None = None, batch_size: int = 32,
             dtype: str | torch.dtype | None = None, **defaults: Any) -> Pipeline:
    """Build a pipeline for `task` (see the module docstring); "auto" picks it from the model.

    `model` is a model directory or a training run (its best/, else final/, model is used; see
    `plmkit.rundir.model_dir`; the tokenizer comes from the same folder unless `tokenizer` is
    given), or a loaded model (then `tokenizer` is required: a Tokenizer or a tokenizer folder).
    "auto" follows the run's recipe (finetune.json) or else the model's head. A fine-tuning run's
    inference settings (max_length, doc_stride, num_beams, ...: what `plmkit eval` used) are the
    defaults of its own task's pipeline. `device` defaults to CUDA when available for a folder,
    else the model's own device; `dtype` "bf16"/"fp16" runs under autocast. `defaults` are task
    options (e.g. top_k=3).
    """
    if task != "auto" and task not in PIPELINES:
        raise ValueError(f"unknown task {task!r}; choose from auto, {', '.join(PIPELINES)}")
    recipe, recorded = None, {}
    if isinstance(model, (str, Path)):
        from plmkit.models import load

        folder = model_dir(model)
        model, recipe, recorded = load(folder).eval(), recipe_task(folder), pipeline_options(folder)
        tokenizer = folder if tokenizer is None else tokenizer
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    if tokenizer is None:
        raise ValueError("a loaded model needs tokenizer= (a Tokenizer or a tokenizer folder)")
    if isinstance(tokenizer, (str, Path)):
        from plmkit.data.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(tokenizer)
    chosen = task_for_model(model, recipe) if task == "auto" else task
    cls = PIPELINES[chosen]
    if recipe is None or chosen != task_for_model(model, recipe):
        recorded = {}  # the run's settings are for its own task
    recorded = {k: v for k, v in recorded.items() if k in cls.options or cls.free_options}
    return cls(model, tokenizer, device=device, batch_size=batch_size, dtype=dtype, **{**recorded, **defaults})


__all__ = [
    "FillMaskPipeline", "FeatureExtractionPipeline", "PIPELINES", "Pipeline", "QuestionAnsweringPipeline",
    "SummarizationPipeline", "TextClassificationPipeline", "TextGenerationPipeline", "TokenClassificationPipeline",
    "TranslationPipeline", "group_entities", "label_names", "pipeline", "task_for_model", "word_predictions",
    "word_tag_scores",
]
