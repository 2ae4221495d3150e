"""The training loop: LR schedule, decay groups, accumulation, clipping, guards, bf16, outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from plmkit.config import ConfigError, from_dict, model_config
from plmkit.models import build_model
from plmkit.train.loop import NonFiniteError, StopTraining, TrainConfig, train
from plmkit.train.metrics_log import read_metrics
from plmkit.train.optim import build_optimizer, lr_at, split_decay

VOCAB, SEQ = 64, 12


@pytest.fixture
def tiny_gpt(tiny_gpt):
    """The shared tiny GPT, without dropout unless asked (these tests compare exact numbers)."""
    return lambda dropout=0.0, seed=0: tiny_gpt(seed, dropout=dropout, attention_dropout=dropout)


def example(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Example i: in each group of 8, four random rows with few targets, four easy repetitive rows."""
    g = torch.Generator().manual_seed(1000 + i)
    if i % 8 < 4:
        ids = torch.randint(3, VOCAB, (SEQ,), generator=g)
        labels = ids.clone()
        labels[: SEQ - 2 - i % 3] = -100  # 2-4 targets
    else:
        ids = (torch.arange(SEQ) * (3 + i % 4)) % (VOCAB - 3) + 3
        labels = ids.clone()
    return ids, labels


class ExampleStream:
    """Micro-batches of consecutive examples; resumable by position; shardable by rank."""

    def __init__(self, batch_size: int, poison_at: set[int] | None = None) -> None:
        self.batch_size, self.index, self.rank, self.world = batch_size, 0, 0, 1
        self.poison_at = poison_at or set()
        self.batches = 0

    def __iter__(self):
        while True:
            rows = [example(self.rank + self.world * (self.index + k)) for k in range(self.batch_size)]
            self.index += self.batch_size
            self.batches += 1
            ids = torch.stack([r[0] for r in rows])
            batch = {"input_ids": ids, "labels": torch.stack([r[1] for r in rows])}
            if self.batches in self.poison_at:
                batch["poison"] = True
            yield batch

    def shard(self, rank: int, world_size: int) -> None:
        self.rank, self.world = rank, world_size

    def state_dict(self) -> dict:
        return {"index": self.index, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.index, self.batches = state["index"], state["batches"]


class PoisonableLM(torch.nn.Module):
    """Wraps a model; a batch marked poison=True gets a NaN loss."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, poison: bool = False, **batch):
        out = self.inner(**batch)
        if poison:
            out.loss = out.loss * float("nan")
        return out


def quiet(**kw) -> TrainConfig:
    base = dict(lr=1e-3, max_steps=3, batch_size=4, log_every=1, save_every=0, progress=False, min_lr_ratio=0.0,
                precision="fp32")
    return TrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------- config and schedule


def test_train_config_parses_from_dict_and_rejects_unknown_keys():
    cfg = from_dict(TrainConfig, {"lr": 1e-4, "betas": [0.9, 0.95], "fused_adamw": "auto", "schedule": "cosine"},
                    "train")
    assert cfg.betas == (0.9, 0.95) and cfg.fused_adamw == "auto" and cfg.schedule == "cosine"
    assert from_dict(TrainConfig, {"fused_adamw": False}, "train").fused_adamw is False
    with pytest.raises(ConfigError, match="train.learning_rate"):
        from_dict(TrainConfig, {"learning_rate": 1e-4}, "train")
    with pytest.raises(ConfigError, match="train.grad_accum"):
        from_dict(TrainConfig, {"grad_accum": 0}, "train")
    with pytest.raises(ConfigError, match="train.precision"):
        from_dict(TrainConfig, {"precision": "fp16"}, "train")


def test_lr_schedule_values():
    # warmup: linear from peak/warmup at step 1 to the peak at step `warmup`
    assert lr_at(1, 1.0, 4, 14, "linear") == pytest.approx(0.25)
    assert lr_at(4, 1.0, 4, 14, "linear") == pytest.approx(1.0)
    # linear decay to min_lr at max_steps, then flat
    assert lr_at(9, 1.0, 4, 14, "linear", 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(14, 1.0, 4, 14, "linear", 0.1) == pytest.approx(0.1)
    assert lr_at(20, 1.0, 4, 14, "linear", 0.1) == pytest.approx(0.1)
    # cosine: half way is the midpoint, the end is min_lr
    assert lr_at(9, 2.0, 4, 14, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_at(5, 2.0, 4, 14, "cosine", 0.0) == pytest.approx(1.0 + math.cos(math.pi * 0.1))
    assert lr_at(14, 2.0, 4, 14, "cosine", 0.5) == pytest.approx(1.0)
    assert lr_at(10, 3.0, 4, 14, "constant") == 3.0
    assert quiet(lr=2.0, warmup_steps=2, max_steps=4).lr_at(1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="schedule"):
        lr_at(1, 1.0, 0, 10, "step")  # type: ignore[arg-type]


def test_no_decay_groups_cover_norms_biases_and_embeddings(tiny_gpt):
    model = tiny_gpt()
    decay, no_decay = split_decay(model)
    assert "transformer.blocks.0.attn.qkv.weight" in decay
    assert "transformer.blocks.1.mlp.fc.weight" in decay
    for name in ("transformer.emb.tok.weight", "transformer.emb.pos.weight", "transformer.blocks.0.ln_attn.weight",
                 "transformer.norm_f.bias", "transformer.blocks.0.attn.qkv.bias"):
        assert name in no_decay
    assert "lm_head.weight" not in decay + no_decay  # tied to the token embedding: listed once
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.defaults["fused"] is True  # torch has a fused AdamW kernel for CPU


# --------------------------------------------------------------------------- the step


def test_grad_accum_matches_one_big_batch(tmp_path, tiny_gpt):
    """accum 2 x batch 4 == batch 8: token-weighted losses make the updates equal."""
    kw = dict(max_steps=4, lr=1e-3, weight_decay=0.0, eps=1e-6)  # eps: Adam amplifies rounding noise of ~0 grads
    a = tiny_gpt()
    ra = train(a, ExampleStream(8), quiet(batch_size=8, grad_accum=1, **kw), tmp_path / "a")
    b = tiny_gpt()
    rb = train(b, ExampleStream(4), quiet(batch_size=4, grad_accum=2, **kw), tmp_path / "b")
    assert ra.losses == pytest.approx(rb.losses, abs=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=0), name


def test_clipped_gradient_norm_equals_clip_norm(tmp_path, monkeypatch, tiny_gpt):
    seen = {}
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen["norm"] = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    train(tiny_gpt(), ExampleStream(4), quiet(max_steps=1, clip_norm=0.05), tmp_path / "clip")
    assert seen["norm"] == pytest.approx(0.05, rel=1e-4)
    train(tiny_gpt(), ExampleStream(4), quiet(max_steps=1, clip_norm=None), tmp_path / "free")
    assert seen["norm"] == pytest.approx(read_metrics(tmp_path / "free", "train")[0]["grad_norm"], rel=1e-5)
    assert seen["norm"] > 0.5


def test_nonfinite_loss_stops_before_the_update(tmp_path, tiny_gpt):
    model = PoisonableLM(tiny_gpt())
    before = {}

    def remember(step, metrics):
        before.update({n: p.detach().clone() for n, p in model.named_parameters()})

    with pytest.raises(NonFiniteError, match="step 3: loss nan"):
        train(model, ExampleStream(4, poison_at={3}), quiet(max_steps=5), tmp_path, callbacks=[remember])
    for name, p in model.named_parameters():  # still the weights after step 2
        assert torch.equal(p, before[name]), name


def test_nonfinite_steps_can_be_skipped(tmp_path, tiny_gpt):
    model = PoisonableLM(tiny_gpt())
    result = train(model, ExampleStream(4, poison_at={2}), quiet(max_steps=4, max_nonfinite_skips=1), tmp_path)
    assert result.step == 4 and result.skipped_steps == 1
    assert math.isnan(result.losses[1]) and all(math.isfinite(x) for i, x in enumerate(result.losses) if i != 1)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_autocast_step_runs(tmp_path, tiny_gpt):
    model = tiny_gpt()
    start = [p.detach().clone() for p in model.parameters()]
    result = train(model, ExampleStream(4), quiet(max_steps=2, precision="bf16"), tmp_path)
    assert all(math.isfinite(x) for x in result.losses)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert any(not torch.equal(p, s) for p, s in zip(model.parameters(), start))


# --------------------------------------------------------------------------- around the step


def test_outputs_eval_and_callbacks(tmp_path, tiny_gpt):
    calls = []

    def eval_fn(m):
        assert not m.training and not torch.is_grad_enabled()
        return {"loss": 1.5 + len(calls), "accuracy": 0.5}

    def stop_at_4(step, metrics):
        calls.append(step)
        if step == 4:
            raise StopTraining

    model = tiny_gpt()
    result = train(model, ExampleStream(4), quiet(max_steps=10, eval_every=2, log_every=2, save_every=3),
                   tmp_path, eval_fn=eval_fn, callbacks=[stop_at_4])
    assert result.stopped_early and result.step == 4 and calls == [1, 2, 3, 4]
    assert [e["step"] for e in result.eval_history] == [2, 4]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["seed"] == 0 and run["config"]["max_steps"] == 10
    assert set(run["versions"]) >= {"torch", "plmkit", "python"}
    assert run["model"]["config"]["hidden_size"] == 32
    records = read_metrics(tmp_path)
    assert [(r["kind"], r["step"]) for r in records] == [("train", 2), ("eval", 2), ("train", 4), ("eval", 4)]
    assert records[0]["loss"] == pytest.approx(sum(result.losses[:2]) / 2)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "final" / "model.safetensors").is_file()
    # checkpoint at step 3 (save_every) and a final one at the stopping step 4
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-00000003", "checkpoint-00000004"]


def test_stream_without_labels_is_a_clear_error(tmp_path, tiny_gpt):
    class NoLabels(ExampleStream):
        def __iter__(self):
            for batch in super().__iter__():
                yield {"input_ids": batch["input_ids"]}

    with pytest.raises(ValueError, match="no loss"):
        train(tiny_gpt(), NoLabels(4), quiet(), tmp_path)


def test_layer_wise_lr_decay_scales_each_depth():
    model = build_model(model_config("bert-tiny", ["num_layers=3", "hidden_size=32", "num_heads=2",
                                                   "intermediate_size=64", "vocab_size=50"]),
                        "sequence-classification")
    flat = build_optimizer(model, lr=1e-3, weight_decay=0.01, fused=False)
    assert {g["lr"] for g in flat.param_groups} == {1e-3}
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.01, fused=False, layer_decay=0.5)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    lr_of = {n: by_id[id(p)]["lr"] for n, p in model.named_parameters()}
    assert lr_of["classifier.weight"] == lr_of["pooler.dense.weight"] == 1e-3
    assert lr_of["transformer.blocks.2.mlp.fc.weight"] == pytest.approx(5e-4)
    assert lr_of["transformer.blocks.0.attn.qkv.weight"] == pytest.approx(1.25e-4)
    assert lr_of["transformer.emb.tok.weight"] == pytest.approx(6.25e-5)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for g in flat.param_groups if g["weight_decay"] > 0 for p in g["params"]}


def test_precision_auto_resolves_by_hardware_and_is_recorded(tmp_path, monkeypatch, tiny_gpt):
    from plmkit.train import loop

    cpu = torch.device("cpu")
    assert loop.resolve_precision("fp32", cpu) == "fp32" and loop.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    assert loop.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)
    assert loop.resolve_precision("auto", cpu) == "bf16"
    train(tiny_gpt(), ExampleStream(4), quiet(precision="auto", max_steps=1), tmp_path)
    assert json.loads((tmp_path / "run.json").read_text())["precision"] == "bf16"
