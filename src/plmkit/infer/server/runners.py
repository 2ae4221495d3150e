"""What the inference thread runs for each kind of job: pipeline calls, completions, streams, explanations.

Each runner takes a batch of jobs of its kind (all with the same options) and returns one
result per job. They run only on the inference thread (`plmkit.infer.server.worker`).
"""

from __future__ import annotations

from typing import Any

from plmkit.infer.generation import encode_prompt, generate, stream_text
from plmkit.infer.pipeline import Pipeline
from plmkit.infer.quantize import weight_format
from plmkit.infer.server.limits import ServerLimits
from plmkit.infer.server.worker import END, Job, Runner


def runners(pipe: Pipeline, limits: ServerLimits) -> dict[str, Runner]:
    """The runners of a served pipeline, by job kind."""
    return {
        "predict": lambda jobs: predict(pipe, limits, jobs),
        "complete": lambda jobs: complete(pipe, limits, jobs),
        "stream": lambda jobs: stream(pipe, limits, jobs),
        "explain": lambda jobs: [explain(pipe, limits, job.payload, job.options) for job in jobs],
    }


def predict(pipe: Pipeline, limits: ServerLimits, jobs: list[Job]) -> list[list[dict[str, Any]]]:
    """One pipeline call over the inputs of every job; each job gets its own slice of the outputs."""
    items = [item for job in jobs for item in job.payload]
    if pipe.task == "text-generation":
        for i, item in enumerate(items):
            prompt_ids(pipe, limits, item, f"input {i}: " if len(items) > 1 else "")
    outputs = pipe(items, **jobs[0].options)
    return _split(outputs, [job.size for job in jobs])


def complete(pipe: Pipeline, limits: ServerLimits, jobs: list[Job]) -> list[list[dict[str, Any]]]:
    """OpenAI-style completions: per prompt its text, token counts and finish reason."""
    prompts = [p for job in jobs for p in job.payload]
    ids = [prompt_ids(pipe, limits, p, f"prompt {i}: " if len(prompts) > 1 else "") for i, p in enumerate(prompts)]
    out = generate(pipe.model, ids, tokenizer=pipe.tokenizer, **jobs[0].options)
    results = [{"text": text, "prompt_tokens": len(p), "completion_tokens": len(t), "finish_reason": reason}
               for text, p, t, reason in zip(out.texts or [], ids, out.tokens, out.finish_reasons)]
    return _split(results, [job.size for job in jobs])


def stream(pipe: Pipeline, limits: ServerLimits, jobs: list[Job]) -> list[dict[str, Any]]:
    """Stream one prompt: each piece of text goes to the job's queue, then `END` (or the error)."""
    (job,) = jobs
    try:
        ids = prompt_ids(pipe, limits, job.payload)
        pieces = stream_text(pipe.model, pipe.tokenizer, job.payload, **job.options)
        while True:
            try:
                job.emit(next(pieces))
            except StopIteration as stop:
                output = stop.value
                break
    except BaseException as e:
        job.emit(e)
        raise
    job.emit(END)
    return [{"prompt_tokens": len(ids), "completion_tokens": len(output.tokens[0]),
             "finish_reason": output.finish_reasons[0]}]


def prompt_ids(pipe: Pipeline, limits: ServerLimits, prompt: str, where: str = "") -> list[int]:
    """A generation prompt's token ids; more than ``max_prompt_tokens`` is a ValueError (a 400)."""
    ids = encode_prompt(pipe.model, pipe.tokenizer, prompt)
    if len(ids) > limits.max_prompt_tokens:
        raise ValueError(f"{where}the prompt has {len(ids)} tokens; the limit is {limits.max_prompt_tokens} "
                         "(--max-prompt-tokens)")
    return ids


def _split(items: list[Any], sizes: list[int]) -> list[list[Any]]:
    out, start = [], 0
    for size in sizes:
        out.append(items[start: start + size])
        start += size
    return out


# --------------------------------------------------------------------------- explanations


def explain_support(pipe: Pipeline) -> dict[str, Any]:
    """What /explain offers for this model: attention maps always, attributions for fp32 classifiers."""
    attribution, why = True, None
    if pipe.model.task != "sequence-classification":
        attribution, why = False, "token attributions (integrated gradients) explain sequence classifiers"
    elif weight_format(pipe.model) != "fp32":
        attribution, why = False, (f"token attributions need fp32 weights; this server runs "
                                   f"{weight_format(pipe.model)} (plmkit serve --dtype)")
    return {"attention": True, "attribution": attribution, "attribution_unavailable": why,
            "layers": pipe.config.num_layers, "heads": pipe.config.num_heads}


def explain(pipe: Pipeline, limits: ServerLimits, payload: tuple[str, str | None],
            options: dict[str, Any]) -> dict[str, Any]:
    """Attention map of one layer (one head or their mean) and, for classifiers, token attributions."""
    from plmkit.explain import explain_text, text_attention

    text, pair = payload
    count = len(pipe.tokenizer.encode(text, pair, truncation=False).ids)
    if count == 0:
        raise ValueError("the input has no tokens to explain")
    if count > limits.max_explain_tokens:
        raise ValueError(f"the input has {count} tokens; /explain takes at most {limits.max_explain_tokens} "
                         "(--max-explain-tokens)")
    tokens, maps = text_attention(pipe.model, pipe.tokenizer, text, pair)  # (L, H, T, T)
    layers, heads = maps.shape[:2]
    layer, head = options.get("layer", -1), options.get("head")
    if not -layers <= layer < layers:
        raise ValueError(f"layer {layer} is out of range for a model with {layers} layers")
    if head is not None and not 0 <= head < heads:
        raise ValueError(f"head {head} is out of range for {heads} heads")
    weights = maps[layer].mean(dim=0) if head is None else maps[layer, head]  # (T, T)
    result: dict[str, Any] = {
        "tokens": tokens,
        "attention": {"layer": layer % layers, "layers": layers, "head": head, "heads": heads,
                      "weights": [[round(float(w), 4) for w in row] for row in weights.float()]},
        "attribution": None,
    }
    support = explain_support(pipe)
    if support["attribution"]:
        a = explain_text(pipe.model, pipe.tokenizer, text, pair, target=options.get("target"),
                         n_steps=options.get("n_steps") or min(32, limits.max_explain_steps))
        result["attribution"] = {"tokens": a.tokens, "scores": [round(s, 6) for s in a.scores], "label": a.label,
                                 "target": a.target, "f_input": a.f_input, "f_baseline": a.f_baseline,
                                 "delta": a.delta}
    else:
        result["attribution_unavailable"] = support["attribution_unavailable"]
    return result


__all__ = ["complete", "explain", "explain_support", "predict", "prompt_ids", "runners", "stream"]
