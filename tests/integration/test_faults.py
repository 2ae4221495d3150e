"""Faults on real processes: SIGINT / SIGTERM (checkpoint, exit code, exact resume), SIGKILL at
random points (resume == uninterrupted), two runs on one folder, a full disk on a size-limited
file system, a read-only folder, and the memory of a single huge line. All marked slow."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plmkit.config import model_config
from plmkit.data.shards import prepare
from plmkit.data.tokenizer import Tokenizer
from plmkit.errors import ResourceError
from plmkit.models import build_model
from plmkit.train import checkpoint as ckpt
from plmkit.train.loop import TrainConfig, train
from plmkit.train.metrics_log import read_metrics

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WORDS = ("the a of film story king queen night day good bad funny dull actor scene light dark river stone "
         "house garden letter music winter summer city road").split()


def words(n: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# --------------------------------------------------------------------------- SIGINT / SIGTERM via the CLI


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("signals")
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(words(14, rng) for _ in range(6)) for _ in range(60)) + "\n")
    tok = Tokenizer.train([corpus], vocab_size=120).save(root / "tok")
    return prepare(corpus, tok, root / "shards", holdout=0.1, progress=False)


def pretrain_args(shards: Path, out: Path, *extra: str) -> list[str]:
    sets = ["model.hidden_size=64", "model.num_heads=2", "model.intermediate_size=128", "model.num_layers=2",
            "model.dropout=0.1", "data.max_length=32", "train.batch_size=8", "train.max_steps=150",
            "train.warmup_steps=5", "train.save_every=50", "train.log_every=1", "train.precision=fp32",
            "train.progress=false", "data.eval_examples=0", "data.prefetch=0"]
    args = [sys.executable, "-m", "plmkit.cli", "pretrain", "--config", "bert-tiny", "--data", str(shards),
            "-o", str(out), *extra]
    for s in sets:
        args += ["--set", s]
    return args


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and any(json.loads(line)["step"] >= step for line in metrics.read_text().splitlines()
                                     if line.strip()):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_writes_a_checkpoint_and_resume_is_exact(shards, tmp_path, signum, code):
    full, run = tmp_path / "full", tmp_path / "run"
    assert subprocess.run(pretrain_args(shards, full), env=ENV, capture_output=True).returncode == 0
    proc = subprocess.Popen(pretrain_args(shards, run), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_step(run, 12, proc)
    proc.send_signal(signal.SIGSTOP)  # paused, holding its lock: a second run on the folder is refused
    if signum == signal.SIGTERM:
        second = subprocess.run(pretrain_args(shards, run, "--resume", "auto"), env=ENV, capture_output=True,
                                text=True)
        assert second.returncode == 6 and "in use by another plmkit run" in second.stderr, second.stderr
    proc.send_signal(signum)  # delivered when it continues, in the middle of its run
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    stopped = ckpt.latest_checkpoint(run)
    step = int(stopped.name.split("-")[1])
    assert 12 <= step < 150 and step % 50, err  # a step between the regular checkpoints
    assert f"training stopped after step {step} of 150" in err and "--resume auto" in err
    assert err.strip().splitlines()[-1].startswith("plmkit pretrain: error: ")
    assert not (run / "final").exists()
    resumed = subprocess.run(pretrain_args(shards, run, "--resume", "auto"), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(full / "final" / "model.safetensors", run / "final" / "model.safetensors")
    assert history(run) == history(full)


def history(run: Path) -> list[dict]:
    """metrics.jsonl without its timings."""
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(run / "metrics.jsonl")]


# --------------------------------------------------------------------------- SIGKILL at random points

CHILD = """
import random, sys, numpy as np, torch
from plmkit.config import model_config
from plmkit.models import build_model
from plmkit.train.loop import TrainConfig, train
torch.set_num_threads(1)

class Stream:
    def __init__(self):
        self.position = 0
    def __iter__(self):
        while True:
            ids = torch.randint(3, 60, (4, 12), generator=torch.Generator().manual_seed(self.position))
            ids = ids + int(np.random.randint(0, 2)) + random.randint(0, 2)
            labels = ids.clone()
            labels[torch.rand(ids.shape) < 0.3] = -100
            self.position += 1
            yield {"input_ids": ids, "labels": labels}
    def state_dict(self):
        return {"position": self.position}
    def load_state_dict(self, state):
        self.position = state["position"]

def report(step, metrics):
    print(step, flush=True)

torch.manual_seed(0)
cfg = model_config("gpt-tiny", ["vocab_size=64", "hidden_size=32", "intermediate_size=64", "max_positions=32",
                                "dropout=0.1", "attention_dropout=0.1", "pad_token_id=0"])
tc = TrainConfig(lr=3e-3, warmup_steps=3, schedule="cosine", max_steps=int(sys.argv[2]), batch_size=4, grad_accum=2,
                 save_every=1, keep_last=2, log_every=1, eval_every=4, progress=False)
train(build_model(cfg, "causal-lm"), Stream(), tc, sys.argv[1], resume="auto", callbacks=[report],
      eval_fn=lambda m: {"probe": float(torch.rand(()))})
"""


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    steps, kills = 400, 20  # each kill lands 1-2 steps after the last checkpoint, plus up to 80 ms of steps
    full, run = tmp_path / "full", tmp_path / "run"
    assert subprocess.run([sys.executable, "-c", CHILD, str(full), str(steps)], env=ENV).returncode == 0
    rng = random.Random(1)
    killed = 0
    while killed < kills:
        done = ckpt.latest_checkpoint(run)
        target = (int(done.name.split("-")[1]) if done else 0) + rng.randint(1, 2)
        if target >= steps:
            break  # (the assertion below reports it)
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run), str(steps)], env=ENV, stdout=subprocess.PIPE,
                                text=True)
        for line in proc.stdout:
            if int(line) >= target:
                break
        time.sleep(rng.uniform(0.0, 0.08))  # somewhere in the next step or its checkpoint write
        proc.kill()
        proc.wait()
        killed += 1
    assert killed == kills, f"the run reached step {steps} after {killed} kills"
    assert subprocess.run([sys.executable, "-c", CHILD, str(run), str(steps)], env=ENV,
                          stdout=subprocess.DEVNULL).returncode == 0
    assert history(run) == history(full)
    for name in ("final/model.safetensors", f"checkpoint-{steps:08d}/optimizer.safetensors",
                 f"checkpoint-{steps:08d}/rng-rank0.safetensors"):
        assert same_weights(full / name, run / name), name
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]


# --------------------------------------------------------------------------- a full disk


def can_mount() -> str | None:
    """None when a tmpfs can be mounted here, else why not."""
    if os.geteuid() != 0:
        return "needs root to mount a size-limited tmpfs (run the suite as root or in a container)"
    probe = Path("/tmp") / f"plmkit-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True)
        if ok.returncode:
            return f"mount failed: {ok.stderr.decode().strip()}"
        subprocess.run(["umount", str(probe)], check=True)
        return None
    finally:
        probe.rmdir()


@pytest.fixture()
def small_disk(tmp_path):
    """mount(size) -> a folder on a tmpfs of that many bytes; unmounted afterwards."""
    why = can_mount()
    if why:
        pytest.skip(why)
    mounted = []

    def mount(size: int, *options: str) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(point)],
                       check=True)
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


class Stream:
    """Random batches; `fill` (a path) is filled up to the last byte while a checkpoint is written."""

    def __init__(self, fill: Path | None = None, vocab: int = 1000) -> None:
        self.position, self.fill, self.vocab = 0, fill, vocab

    def __iter__(self):
        while True:
            ids = torch.randint(3, self.vocab, (2, 16), generator=torch.Generator().manual_seed(self.position))
            self.position += 1
            yield {"input_ids": ids, "labels": ids}

    def state_dict(self) -> dict:
        if self.fill is not None:
            with open(self.fill, "wb", buffering=0) as f:
                for block in (1 << 16, 1 << 12, 1 << 9, 1):
                    try:
                        while True:
                            f.write(b"\0" * block)
                    except OSError as e:
                        assert e.errno == errno.ENOSPC
            self.fill = None
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = model_config("gpt-tiny", ["vocab_size=1000", "hidden_size=128", "intermediate_size=256", "max_positions=32",
                                    "pad_token_id=0", "bos_token_id=1", "eos_token_id=2"])
    return build_model(cfg, "causal-lm")


def config(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(lr=1e-3, max_steps=6, batch_size=2, save_every=1, keep_last=2, log_every=1,
                                 progress=False), **kw})


def checkpoint_size(tmp_path: Path) -> int:
    train(model(), Stream(), config(max_steps=1), tmp_path / "probe")
    return sum(f.stat().st_size for f in (tmp_path / "probe" / "checkpoint-00000001").iterdir())


def test_disk_full_keeps_the_previous_checkpoint_and_pruning_makes_room(tmp_path, small_disk, caplog):
    size = checkpoint_size(tmp_path)  # about 6 MB: weights + two AdamW moments
    # room for two checkpoints and the final export, not for a third checkpoint beside them
    disk = small_disk(int(2.6 * size) + (3 << 20))
    with caplog.at_level(logging.WARNING):
        result = train(model(), Stream(), config(), disk / "run")
    assert result.step == 6 and [p.name for p in ckpt.list_checkpoints(disk / "run")] == [
        "checkpoint-00000005", "checkpoint-00000006"]
    assert "little space left; pruning checkpoint-00000004 before writing step 6" in caplog.text

    # a disk that fills up (another writer) while the step-3 checkpoint is written
    disk2 = small_disk(int(2.6 * size) + (3 << 20))
    train(model(), Stream(), config(max_steps=2), disk2 / "run")
    with pytest.raises(ResourceError, match=rf"no space left on device at {disk2}/run/.tmp-checkpoint-00000003: the "
                                            r"checkpoint of step 3 was not written; the previous checkpoint is intact"):
        train(model(), Stream(fill=disk2 / "ballast"), config(), disk2 / "run", resume="auto")
    # checkpoint-1 was pruned first to make room (keep_last=2), never the newest
    assert [p.name for p in ckpt.list_checkpoints(disk2 / "run")] == ["checkpoint-00000002"]
    assert not (disk2 / "run" / ".tmp-checkpoint-00000003").exists()  # the partial write gave its space back
    ckpt.verify_checkpoint(disk2 / "run" / "checkpoint-00000002")
    # still short of space and nothing prunable (keep_last=1): refused before writing
    with pytest.raises(ResourceError, match=r"checkpoint of step 3 was not written; the newest checkpoint "
                                            r"checkpoint-00000002 is intact.*\(needs about .* MB, .* MB free\)"):
        train(model(), Stream(), config(keep_last=1), disk2 / "run", resume="auto")
    assert [p.name for p in ckpt.list_checkpoints(disk2 / "run")] == ["checkpoint-00000002"]
    (disk2 / "ballast").unlink()
    result = train(model(), Stream(), config(), disk2 / "run", resume="auto")
    assert result.start_step == 2 and result.step == 6


def test_read_only_and_full_disks_through_the_cli(tmp_path, small_disk):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(words(10, random.Random(i)) for i in range(200)) + "\n")
    tok = Tokenizer.train([corpus], vocab_size=80).save(tmp_path / "tok")
    readonly = small_disk(1 << 20, "ro")
    cmd = [sys.executable, "-m", "plmkit.cli", "prepare", str(corpus), "--tokenizer", str(tok), "-o"]
    proc = subprocess.run([*cmd, str(readonly / "shards")], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 4 and f"read-only file system at {readonly}" in proc.stderr, proc.stderr
    full = small_disk(24 << 10)  # a few pages: the shard files (one page each at least) do not fit
    proc = subprocess.run([*cmd, str(full / "shards")], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 4 and f"no space left on device at {full}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not any(full.iterdir())


# --------------------------------------------------------------------------- a single huge line


def peak_rss_mb(*args: str) -> float:
    """Peak resident memory (MB) of a plmkit command, run from a fresh process so nothing else counts."""
    script = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True); "
              "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.stderr[-300:])")
    out = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", "plmkit.cli", *args], env=ENV,
                         capture_output=True, text=True, check=True).stdout.split(maxsplit=2)
    assert out[0] == "0", out
    return int(out[1]) / 1024


def test_a_huge_single_line_costs_memory_in_proportion_to_the_line(tmp_path):
    rng = random.Random(0)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                  for _ in range(3000)]
    line = " ".join(rng.choice(vocabulary) for _ in range(6_000_000))[:40_000_000]  # 40 MB, one line
    (tmp_path / "huge.txt").write_text(line + "\n")
    (tmp_path / "small.txt").write_text("\n".join(line[i:i + 200] for i in range(0, 200_000, 200)) + "\n")
    del line
    base = peak_rss_mb("tokenizer", "train", str(tmp_path / "small.txt"), "--vocab-size", "500", "-o",
                       str(tmp_path / "tok-small"))
    huge = peak_rss_mb("tokenizer", "train", str(tmp_path / "huge.txt"), "--vocab-size", "500", "-o",
                       str(tmp_path / "tok"))
    assert huge - base < 250, (base, huge)  # was ~170 MB per MB of line before pieces (20 MB -> 3.4 GB)
    base = peak_rss_mb("prepare", str(tmp_path / "small.txt"), "--tokenizer", str(tmp_path / "tok"), "-o",
                       str(tmp_path / "shards-small"), "--workers", "1")
    huge = peak_rss_mb("prepare", str(tmp_path / "huge.txt"), "--tokenizer", str(tmp_path / "tok"), "-o",
                       str(tmp_path / "shards"), "--workers", "1", "--holdout", "0")
    assert huge - base < 400, (base, huge)  # the line, its ~8M token ids, the reader's copies
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert meta["splits"]["train"]["sentences"] == 1 and meta["splits"]["train"]["tokens"] > 5_000_000
