"""Generation: parity with `transformers` generate on tiny random GPT-2s, filters, stops, streaming, seq2seq."""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import pytest
import torch

import plmkit
from plmkit import cli
from plmkit.config import ModelConfig
from plmkit.data.tokenizer import Tokenizer
from plmkit.infer import quantize, sampling
from plmkit.infer.generation import GenerationConfig, generate, generate_text, stream_text
from plmkit.infer.sampling import banned_ngram_tokens, repetition_penalty, sample
from plmkit.infer.streaming import IncrementalDetokenizer, StopStrings
from plmkit.models import build_model

transformers = pytest.importorskip("transformers")
from transformers.generation import logits_process as hf_lp  # noqa: E402

V, EOS = 99, 50
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 5, 6, 7, 8, 9, 10], [42]]
TEXT = "你好，世界！🙂 Grüße — 東京タワー 😀👍🏽 naïve café"


def tiny_hf_gpt2(tmp_path: Path, init: float = 0.1, eos_scale: float = 3.0):
    """A random HF GPT-2 (V=99) saved to tmp_path, and the same weights loaded by plmkit.

    The eos row of the tied embedding is scaled up so that eos is often among the best tokens.
    """
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS, initializer_range=init)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        ref.transformer.wte.weight[EOS] *= eos_scale
    ref.save_pretrained(tmp_path)
    return ref, plmkit.load(tmp_path)


def hf_new_tokens(ref, prompt: list[int], **kwargs) -> list[int]:
    out = ref.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                       pad_token_id=EOS, **kwargs)[0, len(prompt):].tolist()
    while len(out) > 1 and out[-1] == EOS and out[-2] == EOS:  # HF pads finished rows with eos
        out.pop()
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_hf_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def gpt2_tok(shared_data: Path) -> Tokenizer:
    return Tokenizer.load(shared_data / "vocab" / "gpt2-vocab.json")


@pytest.fixture(scope="module")
def text_model():
    """A tiny GPT on the full GPT-2 vocabulary with large random weights (varied text)."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="decoder", family="gpt2", vocab_size=50257, hidden_size=32, num_layers=2, num_heads=2,
                      intermediate_size=64, max_positions=128, norm="pre", type_vocab_size=0, activation="gelu_tanh",
                      layer_norm_eps=1e-5, pad_token_id=50256, bos_token_id=50256, eos_token_id=50256)
    model = build_model(cfg, "causal-lm").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


# --------------------------------------------------------------------------- parity with transformers


def test_greedy_matches_transformers(models):
    ref, ours = models
    out = generate(ours, PROMPTS, max_new_tokens=10)
    for prompt, tokens, reason in zip(PROMPTS, out.tokens, out.finish_reasons):
        assert tokens == hf_new_tokens(ref, prompt, max_new_tokens=10, do_sample=False)
        assert reason == ("stop_token" if tokens[-1] == EOS else "length")
    assert "stop_token" in out.finish_reasons and "length" in out.finish_reasons


def test_batched_equals_unbatched_whatever_the_padding_side(models):
    _, ours = models
    single = [generate(ours, [p], max_new_tokens=12).tokens[0] for p in PROMPTS]
    assert generate(ours, PROMPTS, max_new_tokens=12).tokens == single
    width = max(map(len, PROMPTS))  # a right-padded tensor with its mask gives the same result
    ids = torch.full((len(PROMPTS), width), 0)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(PROMPTS):
        ids[i, : len(p)], mask[i, : len(p)] = torch.tensor(p), 1
    assert generate(ours, ids, attention_mask=mask, max_new_tokens=12).tokens == single


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [0.5, 2.0])
def test_beam_search_matches_transformers(models, early_stopping, length_penalty):
    ref, ours = models
    opts = dict(max_new_tokens=10, num_beams=3, length_penalty=length_penalty, early_stopping=early_stopping)
    out = generate(ours, PROMPTS, **opts)
    for prompt, tokens in zip(PROMPTS, out.tokens):
        assert tokens == hf_new_tokens(ref, prompt, do_sample=False, **opts)
    if length_penalty < 1:
        assert any(t[-1] == EOS for t in out.tokens)  # finished hypotheses are exercised
    assert len(out.scores) == len(PROMPTS)


def test_penalties_match_transformers_in_generate(models):
    ref, ours = models
    opts = dict(max_new_tokens=16, repetition_penalty=1.5, no_repeat_ngram_size=2)
    out = generate(ours, PROMPTS, **opts)
    for prompt, tokens in zip(PROMPTS, out.tokens):
        assert tokens == hf_new_tokens(ref, prompt, do_sample=False, **opts)


def test_penalty_functions_match_transformers_processors():
    torch.manual_seed(1)
    ids = torch.randint(0, 12, (4, 30))
    logits = torch.randn(4, V)
    seen = torch.zeros(4, V, dtype=torch.bool).scatter_(1, ids, True)
    expected = hf_lp.RepetitionPenaltyLogitsProcessor(1.7)(ids, logits.clone())
    torch.testing.assert_close(repetition_penalty(logits, seen, 1.7), expected)
    for n in (1, 2, 3):
        expected = hf_lp.NoRepeatNGramLogitsProcessor(n)(ids, logits.clone()).isinf()
        assert torch.equal(banned_ngram_tokens(ids, torch.ones_like(ids, dtype=torch.bool), n, V), expected)


# --------------------------------------------------------------------------- sampling


def hf_allowed(logits: torch.Tensor, temperature: float, top_k, top_p, min_p) -> torch.Tensor:
    """The filtered distribution of transformers' warpers (temperature, top-k, top-p, min-p)."""
    scores = hf_lp.TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        scores = hf_lp.TopKLogitsWarper(top_k)(None, scores)
    if top_p is not None:
        scores = hf_lp.TopPLogitsWarper(top_p)(None, scores)
    if min_p is not None:
        scores = hf_lp.MinPLogitsWarper(min_p)(None, scores)
    return scores.softmax(dim=-1)


@pytest.mark.parametrize("draws", [sampling.REJECTION_DRAWS, 1])  # 1 draw: the sorting fallback runs too
@pytest.mark.parametrize("temperature,top_k,top_p,min_p", [
    (1.0, None, None, None), (0.7, 8, None, None), (1.0, None, 0.6, None), (1.3, None, 0.9, None),
    (1.0, None, None, 0.2), (1.0, 20, 0.8, None), (0.8, 30, 0.9, 0.1), (1.0, None, 0.5, 0.3)])
def test_filters_sample_exactly_the_filtered_distribution(monkeypatch, draws, temperature, top_k, top_p, min_p):
    monkeypatch.setattr(sampling, "REJECTION_DRAWS", draws)
    torch.manual_seed(3)
    logits = torch.randn(1, 64) * 2.0
    expected = hf_allowed(logits, temperature, top_k, top_p, min_p)[0]  # (V,)
    n = 20000
    gen = torch.Generator().manual_seed(0)
    tokens = sample(logits.expand(n, -1), gen, temperature, top_k, top_p, min_p)
    assert bool((expected[tokens] > 0).all()), "sampled a token outside the allowed set"
    freq = torch.bincount(tokens, minlength=64).float() / n
    assert 0.5 * (freq - expected).abs().sum() < 0.03  # total variation distance


def test_mass_above_each_draw_matches_a_direct_sum():
    torch.manual_seed(0)
    probs = torch.randn(3, 500).softmax(dim=-1)
    p = probs.gather(1, torch.randint(0, 500, (3, 8)))
    direct = torch.stack([torch.where(probs > p[:, s, None], probs, 0.0).sum(-1) for s in range(8)], dim=1)
    torch.testing.assert_close(sampling._mass_above(probs, p), direct)


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(models):
    _, ours = models
    state = torch.random.get_rng_state()
    a = generate(ours, PROMPTS, max_new_tokens=12, top_p=0.9, temperature=1.5, seed=7).tokens
    assert torch.equal(torch.random.get_rng_state(), state)
    assert generate(ours, PROMPTS, max_new_tokens=12, top_p=0.9, temperature=1.5, seed=7).tokens == a
    assert generate(ours, PROMPTS, max_new_tokens=12, top_p=0.9, temperature=1.5, seed=8).tokens != a


def test_temperature_zero_and_do_sample_false_are_greedy(models):
    _, ours = models
    greedy = generate(ours, PROMPTS, max_new_tokens=8).tokens
    assert generate(ours, PROMPTS, max_new_tokens=8, temperature=0.0, top_k=5, seed=1).tokens == greedy
    assert generate(ours, PROMPTS, max_new_tokens=8, do_sample=False, top_p=0.5).tokens == greedy
    assert GenerationConfig(top_p=0.9).sampling and not GenerationConfig().sampling


# --------------------------------------------------------------------------- stops


def test_min_new_tokens_holds_eos_back(models):
    ref, ours = models
    free = generate(ours, PROMPTS, max_new_tokens=12).tokens
    early = [len(t) for t in free if t[-1] == EOS]
    assert early and min(early) < 6
    held = generate(ours, PROMPTS, max_new_tokens=12, min_new_tokens=6).tokens
    for prompt, tokens in zip(PROMPTS, held):
        assert EOS not in tokens[:6] and len(tokens) >= 6
        assert tokens == hf_new_tokens(ref, prompt, max_new_tokens=12, min_new_tokens=6, do_sample=False)


def test_stop_token_ids_end_rows(models):
    _, ours = models
    free = generate(ours, PROMPTS, max_new_tokens=12, stop_token_ids=[]).tokens
    stop = free[0][3]
    out = generate(ours, PROMPTS, max_new_tokens=12, stop_token_ids=[stop])
    for full, tokens in zip(free, out.tokens):
        cut = full.index(stop) + 1 if stop in full else len(full)
        assert tokens == full[:cut]


def test_stop_strings_cut_exactly(text_model, gpt2_tok):
    opts = dict(max_new_tokens=30, temperature=1.0, seed=0)
    prompts = ["Hello world", "你好"]
    ids = [gpt2_tok.encode(p, add_special_tokens=False).ids for p in prompts]
    free = generate(text_model, ids, tokenizer=gpt2_tok, **opts)
    stop = free.texts[0][7:11]  # from the middle of the text, across token boundaries
    out = generate(text_model, ids, tokenizer=gpt2_tok, stop_strings=[stop, "never appears"], **opts)
    assert out.texts[0] == free.texts[0][: free.texts[0].index(stop)] and out.finish_reasons[0] == "stop_string"
    assert out.tokens[0] == free.tokens[0][: len(out.tokens[0])] and len(out.tokens[0]) < len(free.tokens[0])
    other = free.texts[1]  # the other row goes on as before
    assert out.texts[1] == (other[: other.index(stop)] if stop in other else other)

    single = generate_text(text_model, gpt2_tok, prompts[:1], **opts)[0]
    stop = single[5:9]
    streamed = "".join(stream_text(text_model, gpt2_tok, prompts[0], stop_strings=[stop], **opts))
    assert streamed == single[: single.index(stop)]

    beam = generate(text_model, ids[:1], tokenizer=gpt2_tok, num_beams=2, max_new_tokens=20)
    word = beam.texts[0][4:7]
    cut = generate(text_model, ids[:1], tokenizer=gpt2_tok, num_beams=2, max_new_tokens=20, stop_strings=[word])
    assert cut.texts[0] == beam.texts[0][: beam.texts[0].index(word)] and cut.finish_reasons[0] == "stop_string"


def test_stop_strings_hold_back_partial_matches():
    stops = StopStrings(["<end>", "\n\n"])
    shown = [stops.feed(t) for t in ["Hi <", "e", "nd", "> more"]]
    assert shown == [("Hi ", False), ("", False), ("", False), ("", True)]
    stops = StopStrings(["<end>"])
    assert [stops.feed(t) for t in ["a <e", "x"]] == [("a ", False), ("<ex", False)]
    assert stops.flush() == ""


# --------------------------------------------------------------------------- streaming


def test_incremental_detokenizer_never_splits_characters(gpt2_tok, shared_data):
    bert_zh = Tokenizer.load(shared_data / "vocab" / "bert-base-chinese-vocab.txt")
    for tok in (gpt2_tok, bert_zh):
        ids = tok.encode(TEXT, add_special_tokens=False).ids
        detok = IncrementalDetokenizer(tok)
        pieces = [detok.add([i]) for i in ids] + [detok.flush()]
        assert not any("\ufffd" in p for p in pieces)
        assert "".join(pieces) == tok.decode(ids)
    assert "".join(pieces) != "" and sum(1 for p in pieces if p) > 5


def test_stream_concatenation_equals_full_decode(text_model, gpt2_tok):
    opts = dict(max_new_tokens=40, temperature=1.0, seed=2)
    prompt = "你好，世界"
    pieces = list(stream_text(text_model, gpt2_tok, prompt, **opts))
    assert len(pieces) > 5 and not any("\ufffd" in p for p in pieces)
    ids = gpt2_tok.encode(prompt, add_special_tokens=False).ids
    tokens = generate(text_model, [ids], **opts).tokens[0]
    assert "".join(pieces) == gpt2_tok.decode(tokens) == generate_text(text_model, gpt2_tok, [prompt], **opts)[0]


# --------------------------------------------------------------------------- seq2seq


def test_seq2seq_cached_greedy_equals_recompute():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="encoder-decoder", family="seq2seq", vocab_size=V, hidden_size=32, num_layers=2,
                      num_heads=4, intermediate_size=64, max_positions=64, norm="pre", type_vocab_size=0,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, initializer_range=0.3)
    model = build_model(cfg, "seq2seq-lm").eval()
    sources = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    out = generate(model, sources, max_new_tokens=10)
    for src, tokens in zip(sources, out.tokens):
        dec = [cfg.decoder_start_token_id]
        with torch.no_grad():
            for _ in range(10):
                logits = model(torch.tensor([src]), decoder_input_ids=torch.tensor([dec])).logits[0, -1]
                dec.append(int(logits.argmax()))
                if dec[-1] == cfg.eos_token_id:
                    break
        assert tokens == dec[1:]
    beams = generate(model, sources, max_new_tokens=10, num_beams=3)
    assert all(0 < len(t) <= 10 for t in beams.tokens)


# --------------------------------------------------------------------------- weights, options, CLI


def test_int8_and_bf16_weights_stay_close(models, tmp_path):
    ref, _ = models
    ids = torch.tensor(PROMPTS[2])[None]
    with torch.no_grad():
        want = plmkit.load(tmp_path_of(ref, tmp_path)).eval()(ids).logits
        for dtype, tolerance in (("fp32", 1e-5), ("bf16", 0.03), ("int8", 0.03), ("int4", 0.3)):
            model = quantize.prepare_for_inference(plmkit.load(tmp_path_of(ref, tmp_path)).eval(), dtype)
            assert quantize.weight_format(model) == dtype
            got = model(ids).logits.float()
            assert (got - want).abs().max() < tolerance * want.abs().max()
            assert generate(model, PROMPTS, max_new_tokens=4).tokens  # generation runs in that format
            with pytest.raises(ValueError, match="original weights"):
                quantize.prepare_for_inference(model, "int8" if dtype != "int8" else "fp32")
    lin = torch.nn.Linear(64, 48)
    q = quantize.Int8Linear(lin)
    assert ((lin.weight - q.dequantized()).abs() <= q.scale.float()[:, None] * 0.5 + 1e-6).all()
    for rows in (3, quantize.SMALL_M + 5):  # the int8 kernel (few rows) and the dequantized matmul (many)
        x = torch.randn(rows, 64)
        torch.testing.assert_close(q(x).float(), torch.nn.functional.linear(x, q.dequantized(), lin.bias),
                                   atol=0.02, rtol=0.02)


def test_int4_layer_computes_its_group_dequantized_weight():
    lin = torch.nn.Linear(64, 48)
    q = quantize.Int4Linear(lin, group_size=32)
    groups = lin.weight.detach().view(48, 2, 32)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = (high - low) / 15
    restored = (torch.round((groups - low) / scale) * scale + low).view(48, 64)
    assert ((restored - lin.weight).abs().view(48, 2, 32) <= scale / 2 + 1e-6).all()
    x = torch.randn(5, 64)
    torch.testing.assert_close(q(x).float(), torch.nn.functional.linear(x, restored, lin.bias), atol=0.03, rtol=0.03)
    assert not quantize.int4_fits(torch.nn.Linear(64, 50)) and not quantize.int4_fits(torch.nn.Linear(48, 64))


def test_decode_step_bytes_count_each_format_once(tiny_gpt):
    model = tiny_gpt(vocab_size=64, tie_embeddings=True)
    c, p = model.config.hidden_size, model.config.max_positions
    everything = sum(t.numel() * t.element_size() for t in model.parameters())
    # the token table is tied to the LM head (read whole); the position table is looked up (one row)
    assert quantize.decode_step_bytes(model) == everything - 4 * p * c
    sizes = {}
    for dtype in ("fp32", "bf16", "int8"):
        converted = quantize.prepare_for_inference(tiny_gpt(vocab_size=64, tie_embeddings=True), dtype)
        sizes[dtype] = quantize.decode_step_bytes(converted)
    assert sizes["fp32"] == everything - 4 * p * c  # the head reads its own transposed copy, not the table
    assert sizes["int8"] < 0.6 * sizes["bf16"] < 0.6 * sizes["fp32"]


def tmp_path_of(ref, tmp_path: Path) -> Path:
    folder = tmp_path / "ref"
    if not folder.exists():
        ref.save_pretrained(folder)
    return folder


def test_bad_options_raise_value_errors(models, text_model):
    _, ours = models
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=1.5)
    with pytest.raises(ValueError, match="valid keys"):
        generate(ours, PROMPTS, top_q=0.5)
    with pytest.raises(ValueError, match="tokenizer"):
        generate(ours, PROMPTS, stop_strings=["x"])
    with pytest.raises(ValueError, match="max_positions"):
        generate(ours, PROMPTS, max_new_tokens=60)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(ours, [[1], []])
    with pytest.raises(ValueError, match="beam"):
        generate(ours, PROMPTS, num_beams=2, do_sample=True)


def test_cli_generate_prints_prompt_and_continuation(text_model, gpt2_tok, tmp_path):
    text_model.save_pretrained(tmp_path, tokenizer=gpt2_tok)
    args = ["generate", str(tmp_path), "Once upon", "--max-new-tokens", "12", "--top-k", "40", "--seed", "3"]
    printed = []
    for extra in ([], ["--stream"]):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert cli.main(args + extra) == 0
        printed.append(buf.getvalue())
    want = generate_text(text_model, gpt2_tok, ["Once upon"], max_new_tokens=12, top_k=40, seed=3)[0]
    assert printed[0] == printed[1] == "Once upon" + want + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
def test_compiled_decode_step_gives_the_same_tokens(models, weights):
    _, ours = models
    model = quantize.prepare_for_inference(copy.deepcopy(ours), weights)  # bf16 on CPU: oneDNN-packed linears
    assert generate(model, PROMPTS, max_new_tokens=8, compile=True).tokens == generate(model, PROMPTS, max_new_tokens=8).tokens
