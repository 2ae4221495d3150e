"""Speed options compute what the plain path computes: fast dropout, the chunked vocabulary loss,
activation checkpointing, regional torch.compile (and its fallback), the allocator setting, and
the attention mask built without a device sync."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

from plmkit.config import ConfigError, from_dict
from plmkit.models.base import PretrainedModel, label_rows, linear_cross_entropy, lm_loss, use_chunked_loss
from plmkit.models.layers import (
    Dropout, _explicit_attention, build_attention_mask, dropout_mask, known_all_real, use_fast_dropout,
)
from plmkit.train import blockwise
from plmkit.train.blockwise import BlockRunner, decide_compile, pad_batch
from plmkit.train.loop import CPU_LOSS_CHUNK, TrainConfig, denormals_flushed, loss_chunk_for, train
from plmkit.train.metrics_log import read_metrics

VOCAB = 64


class Stream:
    """Random LM micro-batches whose length cycles through `lengths`; resumable by position."""

    def __init__(self, batch_size: int = 4, lengths: tuple[int, ...] = (12,), mask: bool = False) -> None:
        self.batch_size, self.lengths, self.mask, self.i = batch_size, lengths, mask, 0

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.i)
            ids = torch.randint(3, VOCAB, (self.batch_size, self.lengths[self.i % len(self.lengths)]), generator=g)
            self.i += 1
            batch = {"input_ids": ids, "labels": ids.clone()}
            if self.mask:
                batch["attention_mask"] = torch.ones_like(ids)
            yield batch

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]


def config(**kw) -> TrainConfig:
    base = dict(lr=1e-3, max_steps=3, batch_size=4, log_every=1, save_every=0, progress=False, precision="fp32",
                compile=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def gpt(tiny_gpt):
    return lambda dropout=0.0, seed=0: tiny_gpt(seed, dropout=dropout, attention_dropout=dropout)


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------- fast dropout


def test_fast_dropout_mask_drops_at_the_requested_rate_and_keeps_the_expectation():
    x = torch.ones(400_000)
    keep, scale = dropout_mask(x, 0.1)
    assert keep.dtype == x.dtype and set(keep.unique().tolist()) == {0.0, 1.0}
    assert keep.mean().item() == pytest.approx(0.9, abs=0.003)
    assert scale == pytest.approx(1 / 0.9, rel=2e-5)  # p is realized to 1 / 2**16
    assert (keep * scale).mean().item() == pytest.approx(1.0, abs=0.004)
    assert dropout_mask(x, 0.0)[0].min().item() == 1.0 and dropout_mask(x, 0.0)[1] == 1.0
    torch.manual_seed(3)
    a = dropout_mask(x, 0.5)[0]
    torch.manual_seed(3)
    assert torch.equal(a, dropout_mask(x, 0.5)[0])  # drawn from torch's seeded generator


def test_fast_dropout_forward_and_gradient_are_the_masked_rescaled_input():
    drop = Dropout(0.25)
    drop.fast = True
    x = torch.randn(6, 10, 16)
    h = torch.randn(6, 10, 16, requires_grad=True)
    torch.manual_seed(1)
    y = drop.residual(x, h)
    torch.manual_seed(1)
    keep, scale = dropout_mask(h, 0.25)
    assert torch.allclose(y, x + h.detach() * keep * scale, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(h.grad, g * keep * scale, atol=1e-6)
    torch.manual_seed(1)
    assert torch.allclose(drop(h), h * keep * scale, atol=1e-6)
    drop.eval()
    assert torch.equal(drop(h), h) and torch.equal(drop.residual(x, h), x + h)


@pytest.mark.parametrize("case", ["none", "causal", "padding", "segments"])
def test_explicit_attention_equals_sdpa(case):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    is_causal, mask = case == "causal", None
    if case == "padding":
        mask, _ = build_attention_mask(torch.tensor([[1] * 7, [1] * 4 + [0] * 3]), 7)
    if case == "segments":
        mask, _ = build_attention_mask(None, 7, segment_ids=torch.tensor([[0, 0, 0, 1, 1, 2, 2], [0] * 5 + [-1] * 2]))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    got = _explicit_attention(q, k, v, mask, is_causal, 0.0)  # p = 0: the mask keeps everything
    assert torch.allclose(got, want, atol=1e-5)


def test_fast_dropout_switch_reaches_every_dropout_and_trains(gpt, tmp_path):
    model = gpt(dropout=0.1)
    use_fast_dropout(model, True)
    flags = [m.fast for m in model.modules() if hasattr(m, "fast")]
    assert flags and all(flags)
    use_fast_dropout(model, False)
    plain = train(gpt(dropout=0.1), Stream(), config(max_steps=6, fast_dropout=False), tmp_path / "plain").losses
    model = gpt(dropout=0.1)
    assert TrainConfig().fast_dropout  # the default
    fast = train(model, Stream(), config(max_steps=6), tmp_path / "fast").losses
    assert not any(m.fast for m in model.modules() if hasattr(m, "fast"))  # the model is given back as it came
    assert fast != plain  # other random draws ...
    assert sum(fast) / 6 == pytest.approx(sum(plain) / 6, abs=0.05)  # ... of the same dropout


# --------------------------------------------------------------------------- chunked loss


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_linear_cross_entropy_equals_full_logits(chunk):
    torch.manual_seed(0)
    h = torch.randn(3, 17, 16, requires_grad=True)
    w = torch.randn(97, 16, requires_grad=True)
    b = torch.randn(97, requires_grad=True)
    labels = torch.randint(0, 97, (3, 17))
    labels[:, ::5] = -100
    want, n_want = lm_loss(F.linear(h, w, b), labels)
    g_want = torch.autograd.grad(want * 3.0, (h, w, b))
    got, n_got = linear_cross_entropy(h, w, b, labels, chunk)
    g_got = torch.autograd.grad(got * 3.0, (h, w, b))
    assert n_got.item() == n_want.item() and got.item() == pytest.approx(want.item(), rel=1e-6)
    for a, c in zip(g_want, g_got):
        assert torch.allclose(a, c, atol=1e-6, rtol=1e-5)


def test_linear_cross_entropy_under_bf16_autocast_and_without_targets():
    torch.manual_seed(0)
    h, w = torch.randn(40, 32, requires_grad=True), torch.randn(50, 32, requires_grad=True)
    labels = torch.randint(0, 50, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = lm_loss(F.linear(h, w), labels)[0]
        got = linear_cross_entropy(h, w, None, labels, 16)[0]
    g_want, g_got = torch.autograd.grad(want, (h, w)), torch.autograd.grad(got, (h, w))
    assert got.item() == pytest.approx(want.item(), rel=2e-3)
    for a, c in zip(g_want, g_got):
        assert c.dtype == torch.float32 and ((a - c).norm() / a.norm()).item() < 2e-2
    loss, n = linear_cross_entropy(h, w, None, torch.full((40,), -100), 16)
    assert n.item() == 0 and loss.item() == 0.0
    loss.backward()
    assert h.grad.abs().max().item() == 0.0


def test_label_rows_put_the_labelled_positions_first_in_a_rounded_count():
    labels = torch.full((4, 50), -100)
    labels[0, 3], labels[1, 7], labels[1, 8], labels[3, 49] = 5, 6, 7, 8
    rows, n = label_rows(labels, multiple=16)
    assert n == 4 and rows.numel() == 16
    assert rows[:4].tolist() == [3, 57, 58, 199]  # in order, as a boolean mask would pick them
    assert (labels.reshape(-1)[rows[4:]] == -100).all()
    assert label_rows(labels[:, :3], multiple=16)[0].numel() == 12  # never more rows than positions
    rows, n = label_rows(torch.full((3,), -100), multiple=16)
    assert n == 0 and rows.tolist() == [0, 1, 2]


def test_ignored_rows_never_reach_the_loss_or_a_gradient():
    torch.manual_seed(0)
    h, w = torch.randn(9, 8), torch.randn(11, 8, requires_grad=True)
    h[5:] = float("nan")  # e.g. a padding position whose attention row was empty
    h.requires_grad_(True)
    labels = torch.tensor([1, 2, 3, 4, 5, -100, -100, -100, -100])
    loss, n = linear_cross_entropy(h, w, None, labels, 3)
    loss.backward()
    want = lm_loss(F.linear(h[:5], w), labels[:5])[0]
    assert n.item() == 5 and loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert torch.isfinite(w.grad).all() and torch.isfinite(h.grad[:5]).all()
    assert (h.grad[5:] == 0).all()


def test_masked_lm_head_multiplies_few_distinct_row_counts(tiny):
    """A new number of masked positions every batch must not make a new matrix shape every step
    (oneDNN keeps a kernel and its buffers per shape: the process grew without bound)."""
    model = tiny("bert-tiny", "masked-lm", vocab_size=VOCAB, dropout=0.0, attention_dropout=0.0)
    counts = []
    model.mlm.dense.register_forward_hook(lambda _m, args, _out: counts.append(args[0].shape[0]))
    use_chunked_loss(model, 1000)
    torch.manual_seed(0)
    for masked in range(1, 140, 3):  # 47 batches, each with its own count of masked positions
        ids = torch.randint(3, VOCAB, (4, 64))
        labels = torch.full_like(ids, -100)
        labels.view(-1)[torch.randperm(ids.numel())[:masked]] = 7
        out = model(input_ids=ids, labels=labels)
        assert out.n_targets.item() == masked
    assert set(counts) == {64, 128, 192}
    model.eval()
    ids = torch.randint(3, VOCAB, (2, 9))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 4] = ids[0, 2], ids[1, 4]
    assert model(input_ids=ids, labels=labels).logits.shape == (2, VOCAB)  # the masked positions' logits only


@pytest.mark.parametrize("preset,task", [("gpt-tiny", "causal-lm"), ("bert-tiny", "pretraining"),
                                         ("bert-tiny", "masked-lm")])
def test_chunked_heads_give_the_same_loss_and_gradients(preset, task, tiny):
    model = tiny(preset, task, vocab_size=VOCAB, dropout=0.0, attention_dropout=0.0)
    ids = torch.randint(3, VOCAB, (3, 11))
    batch = {"input_ids": ids, "labels": ids.clone()}
    if model.config.arch == "encoder":
        batch["labels"][:, ::2] = -100
        if task == "pretraining":
            batch["next_sentence_label"] = torch.tensor([0, 1, 1])
    model(**batch).loss.backward()
    want_loss, want = model(**batch).loss.item(), grads_of(model)
    model.zero_grad()
    assert use_chunked_loss(model, 5)
    out = model(**batch)
    assert out.logits is None
    out.loss.backward()
    assert out.loss.item() == pytest.approx(want_loss, rel=1e-6)
    for name, g in grads_of(model).items():
        assert torch.allclose(g, want[name], atol=1e-6, rtol=1e-5), name
    model.eval()
    assert model(**batch).logits is not None  # evaluation still sees logits
    assert not use_chunked_loss(torch.nn.Linear(2, 2), 5)
    with pytest.raises(ValueError, match="loss chunk"):
        use_chunked_loss(model, -1)


def test_loop_with_chunked_loss_matches_full_logits(gpt, tmp_path):
    plain = train(gpt(), Stream(), config(loss_chunk=0), tmp_path / "plain").losses
    for chunk in (7, "auto"):  # "auto" is chunked on CPU
        model = gpt()
        chunked = train(model, Stream(), config(loss_chunk=chunk), tmp_path / f"chunked-{chunk}").losses
        assert chunked == pytest.approx(plain, rel=1e-5)
        assert model.loss_chunk == PretrainedModel.loss_chunk == 0  # given back with full logits


def test_loss_chunk_auto_is_chunked_on_cpu_only():
    assert TrainConfig().loss_chunk == "auto"
    assert loss_chunk_for("auto", torch.device("cpu")) == CPU_LOSS_CHUNK > 0
    assert loss_chunk_for("auto", torch.device("cuda")) == 0
    assert loss_chunk_for(0, torch.device("cpu")) == 0 and loss_chunk_for(64, torch.device("cuda")) == 64
    for bad in (-1, "fast", 1.5, True):
        with pytest.raises(ConfigError, match="train.loss_chunk"):
            config(loss_chunk=bad)
    with pytest.raises(ConfigError, match="train.loss_chunk: expected an integer or 'auto', got 'fast'"):
        from_dict(TrainConfig, {"loss_chunk": "fast"}, "train")


# --------------------------------------------------------------------------- denormals


def test_denormals_are_flushed_while_training_and_the_setting_is_given_back(gpt, tmp_path):
    assert TrainConfig().flush_denormals and not denormals_flushed()
    during: list[bool] = []
    model = gpt()
    train(model, Stream(), config(), tmp_path / "on", callbacks=[lambda step, m: during.append(denormals_flushed())])
    assert during == [True] * 3 and not denormals_flushed()
    # what it is for: an AdamW moment that has decayed under 1.2e-38 becomes 0, not a slow denormal
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.ones(4)
    opt.step()
    opt.state[p]["exp_avg"].fill_(1e-38)
    p.grad = torch.zeros(4)
    torch.set_flush_denormal(True)
    try:
        opt.step()  # 0.9 * 1e-38 is a denormal
    finally:
        torch.set_flush_denormal(False)
    assert opt.state[p]["exp_avg"].eq(0).all()
    off: list[bool] = []
    train(gpt(), Stream(), config(flush_denormals=False), tmp_path / "off",
          callbacks=[lambda step, m: off.append(denormals_flushed())])
    assert off == [False] * 3


# --------------------------------------------------------------------------- checkpointing, accumulation


def test_activation_checkpointing_keeps_losses_and_gradients(gpt, tmp_path):
    """Dropout on: the recomputation must draw the same masks."""
    ids = torch.randint(3, VOCAB, (4, 12))
    grads = []
    for checkpointing in (False, True):
        model = gpt(dropout=0.1)
        runner = BlockRunner(model, checkpointing=checkpointing)
        assert runner.checkpointing == checkpointing
        torch.manual_seed(5)
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append(grads_of(model))
        runner.restore()
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6, rtol=1e-5), name
    a, b = gpt(dropout=0.1), gpt(dropout=0.1)
    ra = train(a, Stream(), config(), tmp_path / "a")
    rb = train(b, Stream(), config(activation_checkpointing=True), tmp_path / "b")
    assert ra.losses == pytest.approx(rb.losses, rel=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), name
    assert all("forward" not in block.__dict__ for block in b.transformer.blocks)


# --------------------------------------------------------------------------- compile


def test_compile_auto_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert decide_compile("auto", cpu, 100_000)[0] is False
    assert decide_compile("auto", cuda, blockwise.AUTO_MIN_STEPS)[0] is True
    assert decide_compile("auto", cuda, blockwise.AUTO_MIN_STEPS - 1)[0] is False
    assert decide_compile(True, cpu, 1)[0] is True and decide_compile(False, cuda, 10**6)[0] is False
    with pytest.raises(ValueError, match="train.compile"):
        decide_compile("yes", cpu, 1)
    assert TrainConfig().compile == "auto"


def test_pad_batch_pads_lengths_to_a_multiple_without_changing_the_loss(gpt):
    ids = torch.randint(3, VOCAB, (2, 10))
    batch = {"input_ids": ids, "labels": ids.clone(), "token_type_ids": torch.zeros_like(ids)}
    padded = pad_batch(batch, 8, pad_id=0)
    assert padded["input_ids"].shape == (2, 16) and padded["input_ids"][:, 10:].eq(0).all()
    assert padded["labels"][:, 10:].eq(-100).all() and padded["attention_mask"].sum().item() == 20
    packed = pad_batch({"input_ids": ids, "segment_ids": torch.zeros_like(ids)}, 8, 0)
    assert "attention_mask" not in packed and packed["segment_ids"][:, 10:].eq(-1).all()
    assert pad_batch(batch, 5, 0) is batch  # already a multiple
    seq2seq = {"input_ids": ids, "decoder_input_ids": torch.zeros(2, 4, dtype=torch.long)}
    assert pad_batch(seq2seq, 8, 0) is seq2seq  # inputs it does not know: left alone
    model = gpt().eval()
    del batch["token_type_ids"]
    assert model(**pad_batch(batch, 8, 0)).loss.item() == pytest.approx(model(**batch).loss.item(), rel=1e-6)


def test_failed_compile_falls_back_to_eager_with_a_warning(gpt, tmp_path, monkeypatch):
    calls = []

    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            calls.append(kwargs)
            raise torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no compiler here"))
        return run

    import torch._dynamo

    monkeypatch.setattr(blockwise.torch, "compile", broken_compile)
    plain = train(gpt(dropout=0.1), Stream(), config(), tmp_path / "plain")
    model = gpt(dropout=0.1)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        result = train(model, Stream(), config(compile=True), tmp_path / "compiled")
    assert calls and calls[0]["fullgraph"] is True
    assert result.losses == plain.losses  # the failed step re-ran eagerly from the same RNG state
    assert result.compile_s == 0.0 and read_metrics(tmp_path / "compiled", "compile") == []


def test_compile_without_blocks_warns_and_runs_eagerly():
    with pytest.warns(UserWarning, match="no plmkit Transformer blocks"):
        runner = BlockRunner(torch.nn.Linear(2, 2), compile=True)
    assert not runner.compiled


@pytest.mark.slow
@pytest.mark.parametrize("shapes", ["static", "dynamic"])
def test_compiled_blocks_train_like_eager(gpt, tmp_path, shapes):
    stream = lambda: Stream(lengths=(10, 20, 12), mask=True)  # noqa: E731
    cfg = config(max_steps=4, eval_every=2)
    evals = []

    def eval_fn(model):
        evals.append(all("forward" not in b.__dict__ for b in model.transformer.blocks))  # eager in evaluation
        return {"x": 0.0}

    eager = train(gpt(), stream(), cfg, tmp_path / "eager").losses
    model = gpt()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(model, stream(), config(max_steps=4, eval_every=2, compile=True, compile_shapes=shapes),
                       tmp_path / "compiled", eval_fn=eval_fn)
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]  # no fallback
    assert result.losses == pytest.approx(eager, rel=1e-4)
    assert result.compile_s > 0 and evals == [True, True]
    records = read_metrics(tmp_path / "compiled", "compile")
    assert records and records[0]["step"] == 1 and records[0]["seconds"] > 0
    assert all("forward" not in b.__dict__ for b in model.transformer.blocks)


# --------------------------------------------------------------------------- allocator, masks


def test_retaining_freed_memory_changes_no_result(tmp_path):
    script = textwrap.dedent(f"""
        import torch
        from plmkit.config import model_config
        from plmkit.models import build_model
        from plmkit.train.allocator import allocator_in_use
        from plmkit.train.loop import TrainConfig, train
        import sys; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
        from test_speed_options import Stream
        if allocator_in_use() != "glibc":
            print("SKIP"); raise SystemExit
        losses = []
        for i, malloc in enumerate(("default", "retain")):
            torch.manual_seed(0)
            cfg = model_config("gpt-tiny", ["vocab_size=64", "hidden_size=32", "intermediate_size=64",
                                            "num_layers=2", "max_positions=32", "pad_token_id=0"])
            tc = TrainConfig(lr=1e-3, max_steps=3, batch_size=4, save_every=0, progress=False,
                             precision="fp32", compile=False, malloc=malloc)
            losses.append(train(build_model(cfg, "causal-lm"), Stream(), tc, {str(tmp_path)!r} + f"/{{i}}").losses)
        from plmkit.train.allocator import apply_malloc_setting
        print(losses[0] == losses[1], apply_malloc_setting("retain"))
    """)
    assert TrainConfig().malloc == "retain"  # the default on CPU (an A/B in benchmarks/README.md)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if proc.stdout.strip() == "SKIP":
        pytest.skip("not glibc malloc")
    assert proc.stdout.strip().startswith("True allocator: glibc, retaining freed memory"), proc.stdout


def test_masks_on_an_accelerator_are_built_without_reading_them():
    """known_all_real never reads a non-CPU tensor (that would be a device sync per forward)."""
    mask = torch.ones(2, 5, device="meta", dtype=torch.long)  # reading a meta tensor raises
    assert known_all_real(mask) is False
    built, causal = build_attention_mask(mask, 5, causal=True)
    assert built is not None and built.shape == (2, 1, 5, 5) and not causal
    ones = torch.ones(2, 5, dtype=torch.long)
    assert known_all_real(ones) and build_attention_mask(ones, 5, causal=True) == (None, True)


def test_positions_from_an_all_real_mask_are_plain_positions(gpt):
    model = gpt()
    ids = torch.randint(3, VOCAB, (2, 6))
    plain = model.transformer.default_positions(ids, 0, None)
    assert torch.equal(model.transformer.default_positions(ids, 0, torch.ones_like(ids)), plain)
    cached = model.transformer.default_positions(ids[:, :1], 5, torch.ones(2, 6, dtype=torch.long))
    assert cached.tolist() == [[5], [5]]
