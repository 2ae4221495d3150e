"""Checkpoints: no-pickle storage, atomic writes, keep-last-K, resume checks, exact resume after SIGKILL."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from plmkit.config import ConfigError, model_config
from plmkit.models import build_model
from plmkit.train import checkpoint as ckpt
from plmkit.train.loop import TrainConfig, train
from plmkit.train.metrics_log import read_metrics
from plmkit.train.optim import build_optimizer


class CountingStream:
    """Batches of random ids keyed by position; state_dict can be told to fail (a crash mid-write)."""

    def __init__(self, batch_size: int = 2, fail_on_save: int | None = None) -> None:
        self.position, self.batch_size, self.saves, self.fail_on_save = 0, batch_size, 0, fail_on_save

    def __iter__(self):
        while True:
            ids = torch.randint(3, 64, (self.batch_size, 10), generator=torch.Generator().manual_seed(self.position))
            self.position += 1
            yield {"input_ids": ids, "labels": ids}

    def state_dict(self) -> dict:
        self.saves += 1
        if self.saves == self.fail_on_save:
            raise OSError("disk full (simulated)")
        return {"position": self.position, "order": np.arange(3, dtype=np.int64), "key": (1, "a")}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]
        assert state["key"] == (1, "a") and state["order"].tolist() == [0, 1, 2]


def quiet(**kw) -> TrainConfig:
    base = dict(lr=1e-3, max_steps=4, batch_size=2, save_every=2, log_every=1, progress=False, precision="fp32")
    return TrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------- storage


def test_tree_codec_round_trips_without_pickle():
    state = {"a": (1, 2.5, None, "x"), "t": torch.arange(4.0), "n": np.array([3, 4], dtype=np.uint32),
             "ints": {1: "one", (2, 3): [True]}, "__dunder": 1, "nested": [{"b": torch.ones(2, 2)}]}
    data, tensors = ckpt.encode_tree(state)
    back = ckpt.decode_tree(data, tensors)
    assert back["a"] == (1, 2.5, None, "x") and back["ints"] == {1: "one", (2, 3): [True]}
    assert torch.equal(back["t"], state["t"]) and back["n"].dtype == np.uint32 and back["n"].tolist() == [3, 4]
    assert back["__dunder"] == 1 and torch.equal(back["nested"][0]["b"], torch.ones(2, 2))
    with pytest.raises(TypeError, match=r"state\.bad: cannot store a set"):
        ckpt.encode_tree({"bad": {1, 2}})


def test_rng_state_round_trips(tmp_path):
    ckpt.seed_everything(3)
    ckpt.write_tree(tmp_path, "rng", ckpt.capture_rng_state())
    expected = (random.random(), np.random.rand(), torch.rand(2))
    ckpt.restore_rng_state(ckpt.read_tree(tmp_path, "rng"))
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_checkpoint_loading_never_unpickles(tmp_path, monkeypatch, tiny_gpt):
    model = tiny_gpt()
    train(model, CountingStream(), quiet(max_steps=2), tmp_path)
    saved = ckpt.latest_checkpoint(tmp_path)
    assert not list(saved.glob("*.pt")) and not list(saved.glob("*.bin")) and not list(saved.glob("*.pkl"))

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    fresh = tiny_gpt(seed=1)
    opt = build_optimizer(fresh, lr=1e-3)
    state = ckpt.load_checkpoint(saved, fresh, opt, CountingStream(), {"batch_size": 2, "grad_accum": 1,
                                                                      "world_size": 1})
    assert state["step"] == 2
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh.lm_head.weight is fresh.transformer.emb.tok.weight  # tying survives the load


# --------------------------------------------------------------------------- atomicity and pruning


def test_crash_mid_write_leaves_previous_checkpoint(tmp_path, tiny_gpt):
    model = tiny_gpt()
    with pytest.raises(OSError, match="disk full"):
        train(model, CountingStream(fail_on_save=2), quiet(max_steps=6), tmp_path)
    # step 2 is complete; the step-4 write died after the weights and optimizer were on disk
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-00000002"]
    partial = tmp_path / ".tmp-checkpoint-00000004"
    assert (partial / "model.safetensors").is_file() and not (partial / ckpt.MARKER).exists()
    (tmp_path / "checkpoint-00000009").mkdir()  # a folder without the marker never counts
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-00000002"
    result = train(tiny_gpt(), CountingStream(), quiet(max_steps=6), tmp_path, resume="auto")
    assert result.start_step == 2 and result.step == 6
    assert not partial.exists() and not (tmp_path / "checkpoint-00000009").exists()


def test_keep_last_k(tmp_path, tiny_gpt):
    train(tiny_gpt(), CountingStream(), quiet(max_steps=5, save_every=1, keep_last=2), tmp_path)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-00000004", "checkpoint-00000005"]
    assert ckpt.prune_checkpoints(tmp_path, 1) == [tmp_path / "checkpoint-00000004"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-00000005"]


# --------------------------------------------------------------------------- resume rules


def test_resume_with_changed_geometry_names_the_fields(tmp_path, tiny_gpt):
    train(tiny_gpt(), CountingStream(), quiet(max_steps=2), tmp_path)
    with pytest.raises(ConfigError, match=r"batch_size was 2 and is now 4; grad_accum was 1 and is now 2"):
        train(tiny_gpt(), CountingStream(4), quiet(max_steps=4, batch_size=4, grad_accum=2), tmp_path, resume="auto")


def test_resume_may_regroup_ranks_with_the_same_global_batch():
    from plmkit.train.checkpoint import check_resume_compatible

    saved = {"batch_size": 3, "grad_accum": 2, "world_size": 2}
    for batch_size, world_size in ((6, 1), (2, 3), (3, 2)):  # the same 6 examples per micro-batch
        check_resume_compatible(saved, {"batch_size": batch_size, "grad_accum": 2, "world_size": world_size}, "ck")
    with pytest.raises(ConfigError, match="world_size was 2 and is now 3"):
        check_resume_compatible(saved, {"batch_size": 3, "grad_accum": 2, "world_size": 3}, "ck")


def test_resume_targets(tmp_path, tiny_gpt):
    with pytest.raises(FileNotFoundError, match="not found"):
        ckpt.resolve_resume(tmp_path, tmp_path / "nope")
    assert ckpt.resolve_resume(tmp_path, "auto") is None  # nothing yet: a fresh run
    train(tiny_gpt(), CountingStream(), quiet(max_steps=4), tmp_path)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        ckpt.resolve_resume(tmp_path, None)
    newest = tmp_path / "checkpoint-00000004"
    assert ckpt.resolve_resume(tmp_path / "other", tmp_path) == newest  # a run folder: its newest
    assert ckpt.resolve_resume(tmp_path, tmp_path / "checkpoint-00000002") == tmp_path / "checkpoint-00000002"
    (newest / ckpt.MARKER).unlink()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ckpt.resolve_resume(tmp_path, newest)
    # resuming a finished run trains nothing more and re-exports
    result = train(tiny_gpt(), CountingStream(), quiet(max_steps=2), tmp_path, resume="auto")
    assert result.start_step == 2 and result.losses == []


# --------------------------------------------------------------------------- the key test


class NoisyStream:
    """Random windows whose masking draws on the torch, numpy and python global RNGs.

    ``kill_on_save=N`` SIGKILLs the process inside the N-th checkpoint write (after the
    weights and optimizer state are already in the temp folder)."""

    def __init__(self, kill_on_save: int | None = None) -> None:
        self.position, self.saves, self.kill_on_save = 0, 0, kill_on_save

    def __iter__(self):
        while True:
            ids = torch.randint(3, 60, (4, 12), generator=torch.Generator().manual_seed(self.position))
            ids = ids + int(np.random.randint(0, 2)) + random.randint(0, 2)
            labels = ids.clone()
            labels[torch.rand(ids.shape) < 0.3] = -100
            self.position += 1
            yield {"input_ids": ids, "labels": labels}

    def state_dict(self) -> dict:
        self.saves += 1
        if self.saves == self.kill_on_save:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def train_noisy(out: Path, kill_on_save: int | None = None, crash_at: int | None = None) -> None:
    """8 steps of a tiny GPT with dropout, accumulation, warmup + cosine, evals that use the RNG."""

    def crash(step, metrics):
        if step == crash_at:
            raise RuntimeError("crash")

    torch.manual_seed(0)
    cfg = model_config("gpt-tiny", ["vocab_size=64", "hidden_size=32", "intermediate_size=64", "max_positions=32",
                                    "dropout=0.1", "attention_dropout=0.1", "pad_token_id=0"])
    tc = TrainConfig(lr=3e-3, warmup_steps=2, schedule="cosine", max_steps=8, batch_size=4, grad_accum=2,
                     save_every=2, keep_last=2, log_every=1, eval_every=3, progress=False, precision="fp32")
    train(build_model(cfg, "causal-lm"), NoisyStream(kill_on_save), tc, out, resume="auto", callbacks=[crash],
          eval_fn=lambda m: {"probe": float(torch.rand(()))})


def test_sigkilled_run_resumes_to_identical_losses_and_weights(tmp_path):
    """A process SIGKILLed while writing its step-6 checkpoint; resumed (from 4), crashed after
    step 7; resumed (from 6): per-step losses, grad norms, eval results and final weights,
    optimizer and RNG state equal an uninterrupted run bit for bit."""
    full_dir, run_dir = tmp_path / "full", tmp_path / "run"
    proc = subprocess.run([sys.executable, __file__, str(run_dir), "3"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["checkpoint-00000002", "checkpoint-00000004"]
    assert (run_dir / ".tmp-checkpoint-00000006" / "model.safetensors").is_file()  # half-written, not counted
    # this process runs one thread like the killed one (_one_thread): the same reduction order
    with pytest.raises(RuntimeError, match="crash"):
        train_noisy(run_dir, crash_at=7)  # resumes at 4, dies after step 7
    assert ckpt.latest_checkpoint(run_dir).name == "checkpoint-00000006"
    assert max(r["step"] for r in read_metrics(run_dir)) == 7
    train_noisy(run_dir)  # resumes at 6
    train_noisy(full_dir)

    def history(folder: Path) -> list[tuple]:
        return [(r["kind"], r["step"], r.get("loss"), r.get("probe"), r.get("grad_norm")) for r in read_metrics(folder)]

    assert [h[1] for h in history(full_dir) if h[0] == "train"] == list(range(1, 9))
    assert history(run_dir) == history(full_dir)
    for name in ("final/model.safetensors", "checkpoint-00000008/model.safetensors",
                 "checkpoint-00000008/optimizer.safetensors", "checkpoint-00000008/rng-rank0.safetensors"):
        a, b = load_file(full_dir / name), load_file(run_dir / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key}"
    assert not list(run_dir.glob(".tmp-*"))


if __name__ == "__main__":  # the process that the key test SIGKILLs: OUT_DIR KILL_ON_SAVE
    torch.set_num_threads(1)
    train_noisy(Path(sys.argv[1]), kill_on_save=int(sys.argv[2]))
