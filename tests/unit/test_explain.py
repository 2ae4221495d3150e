"""Explanations: recomputed attention maps and integrated-gradients attributions."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from plmkit.data.tokenizer import Tokenizer
from plmkit.explain import (
    attention_maps, attention_modules, cli_configure, cli_run, explain_text, integrated_gradients, plot_attention,
    render_html, render_text, text_attention,
)
from plmkit.models import build_model

EXPLAIN_SHAPE = {"num_heads": 4, "initializer_range": 0.2}
"""Four heads and larger initial weights than the shared tiny shape: attention maps worth checking."""


@pytest.fixture
def tiny(tiny):
    """The shared tiny model with 4 heads, a 100-token vocabulary and (GPT) special ids 99, in eval mode."""

    def make(preset: str, task: str, **changes):
        special = {"pad_token_id": 99, "bos_token_id": 99, "eos_token_id": 99} if preset.startswith("gpt") else {}
        return tiny(preset, task, vocab_size=100, **EXPLAIN_SHAPE, **special, **changes).eval()

    return make


def padded_batch(pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(5, 99, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = pad
    return ids, mask


def sdpa_outputs(model, stack: str, ids, mask, **kwargs) -> list[torch.Tensor]:
    """What each attention call of `stack` returned, captured by hooks on the model's own path."""
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda mod, args, out: seen.append(out))
               for m in dict.fromkeys(attention_modules(model, stack))]
    with torch.no_grad():
        model(ids, attention_mask=mask, **kwargs)
    for h in handles:
        h.remove()
    return seen


def values_of(module, stack_input: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
    if module.cross:
        return module._heads(module.kv(memory).chunk(2, dim=-1)[1])
    return module._heads(module.qkv(stack_input).chunk(3, dim=-1)[2])


@pytest.mark.parametrize("preset,task,stack,extra", [
    ("bert-tiny", "masked-lm", "self", {}), ("albert-base", "sequence-classification", "self", {}),
    ("gpt-tiny", "causal-lm", "self", {}), ("gpt-tiny", "causal-lm", "self", {"position": "rotary"}),
    ("seq2seq-small", "seq2seq-lm", "decoder", {}), ("seq2seq-small", "seq2seq-lm", "cross", {}),
])
def test_maps_reproduce_the_attention_output(preset, task, stack, extra, tiny):
    model = tiny(preset, task, **extra)
    ids, mask = padded_batch(model.config.pad_token_id)
    kwargs = {"decoder_input_ids": ids[:, :5]} if model.config.arch == "encoder-decoder" else {}
    maps = attention_maps(model, ids, mask, stack=stack, **kwargs)
    layers = model.config.decoder_layers if stack != "self" else model.config.num_layers
    queries = 5 if stack != "self" else ids.size(1)
    keys = queries if stack == "decoder" else ids.size(1)
    assert maps.shape == (layers, 2, 4, queries, keys)
    torch.testing.assert_close(maps.sum(-1), torch.ones(layers, 2, 4, queries))
    if stack != "decoder":  # padding keys of row 1 get exactly 0 (from its real queries, at least)
        real_queries = slice(None) if stack == "cross" or model.config.arch == "encoder" else slice(0, 6)
        assert torch.all(maps[:, 1, :, real_queries, 6:] == 0)
    if stack == "decoder" or model.config.arch == "decoder":  # causal: no query sees a later key
        assert torch.all(maps.triu(diagonal=1) == 0)
    # Probabilities @ values, projected, equal what the SDPA path produced.
    inputs: list[tuple] = []
    modules = list(dict.fromkeys(attention_modules(model, stack)))
    handles = [m.register_forward_hook(lambda mod, a, kw, out: inputs.append((mod, a, kw)), with_kwargs=True)
               for m in modules]
    produced = sdpa_outputs(model, stack, ids, mask, **kwargs)
    for h in handles:
        h.remove()
    for layer, ((module, args, kw), out) in enumerate(zip(inputs, produced)):
        v = values_of(module, args[0], kw.get("memory"))  # (B, H, S, D)
        y = maps[layer] @ v
        recomputed = module.proj(y.transpose(1, 2).reshape(out.shape))
        torch.testing.assert_close(recomputed, out, atol=1e-5, rtol=1e-4)


def test_maps_match_transformers_eager_attentions(tmp_path, tiny):
    transformers = pytest.importorskip("transformers")
    model = tiny("bert-tiny", "feature-extraction")
    model.save_pretrained(tmp_path)
    hf = transformers.BertModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    maps = attention_maps(model, ids, mask)
    torch.testing.assert_close(maps[..., 6:][:, 1], torch.stack(expected)[..., 6:][:, 1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(maps[:, 0], torch.stack(expected)[:, 0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("preset", ["bert-tiny", "gpt-tiny"])
@pytest.mark.parametrize("output", ["probability", "logit"])
def test_integrated_gradients_completeness(preset, output, tiny):
    model = tiny(preset, "sequence-classification", num_labels=3)
    ids, mask = padded_batch(model.config.pad_token_id)
    ids, mask = ids[:1], mask[:1]
    base = torch.full_like(ids, model.config.pad_token_id)
    attributions, f_x, f_0 = integrated_gradients(model, ids, mask, target=2, baseline_ids=base,
                                                  n_steps=32, output=output)
    assert attributions.shape == (9,)
    gap = f_x - f_0
    assert abs(gap) > 1e-3  # the check below is not vacuous
    assert float(attributions.sum()) == pytest.approx(gap, rel=1e-3, abs=1e-5)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits[0]
    expected = logits.softmax(-1)[2] if output == "probability" else logits[2]
    assert f_x == pytest.approx(float(expected), rel=1e-5)
    zero, _, f_zero = integrated_gradients(model, ids, mask, target=2, n_steps=32, output=output)
    assert float(zero.sum()) == pytest.approx(f_x - f_zero, rel=1e-3, abs=1e-5)
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def bert_classifier(shared_data: Path, tiny_config):
    tok = Tokenizer.load(shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    model = tiny_config("bert-tiny", **EXPLAIN_SHAPE, id2label={0: "neg", 1: "pos"})
    torch.manual_seed(0)
    return build_model(model, "sequence-classification").eval(), tok


def test_explain_text_pad_baseline_renders_and_keeps_specials_at_zero(bert_classifier, tiny):
    model, tok = bert_classifier
    attribution = explain_text(model, tok, "a <gripping> film", target="pos", n_steps=24)
    assert attribution.tokens[0] == "[CLS]" and attribution.tokens[-1] == "[SEP]" and attribution.label == "pos"
    assert attribution.scores[0] == 0.0 and attribution.scores[-1] == 0.0
    assert abs(attribution.delta) <= 1e-3 * abs(attribution.f_input - attribution.f_baseline) + 1e-6
    text = render_text(attribution)
    assert "gripping" in text and "delta" in text
    html = render_html(attribution)
    assert "&lt;" in html and "<gripping>" not in html
    with pytest.raises(ValueError, match="unknown label 'maybe'"):
        explain_text(model, tok, "x", target="maybe")
    with pytest.raises(ValueError, match="sequence classifiers"):
        explain_text(tiny("bert-tiny", "masked-lm"), tok, "x")


def test_heatmap_and_command_line(bert_classifier, tmp_path):
    model, tok = bert_classifier
    tokens, maps = text_attention(model, tok, "hello there", "world")
    assert maps.shape == (2, 4, len(tokens), len(tokens))
    png = plot_attention(maps[-1], tokens, tmp_path / "a.png", title="last layer")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="do not match"):
        plot_attention(maps[-1], tokens[:-1], tmp_path / "b.png")
    run_dir = model.save_pretrained(tmp_path / "run", tok)
    parser = argparse.ArgumentParser()
    cli_configure(parser)
    cli_run(parser.parse_args([str(run_dir), "a fine film", "--n-steps", "8", "-o", str(tmp_path / "ig")]))
    assert "attribution" in (tmp_path / "ig" / "attribution.html").read_text()
    cli_run(parser.parse_args([str(run_dir), "a fine film", "--method", "attention", "-o", str(tmp_path / "att")]))
    assert (tmp_path / "att" / "attention-layer1.png").is_file()
