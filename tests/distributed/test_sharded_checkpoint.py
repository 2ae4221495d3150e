"""FSDP2 checkpoints are sharded (torch.distributed.checkpoint, no gather) and resume at another world size.

Two gloo processes train 3 steps and save; the run then resumes to step 6 on one process and,
from a copy, on three FSDP2 processes. Both match one process trained for 6 steps straight.

This file is also the torchrun worker: ``python -m torch.distributed.run --nproc_per_node N
tests/distributed/test_sharded_checkpoint.py OUT_DIR MAX_STEPS``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plmkit.config import model_config
from plmkit.models import build_model
from plmkit.train.checkpoint import SHARDED_DIR, list_checkpoints
from plmkit.train.loop import TrainConfig, train
from plmkit.train.metrics_log import read_metrics

GLOBAL_MICRO_BATCH = 6  # divisible by 1, 2 and 3 processes


def example(i: int) -> torch.Tensor:
    return torch.randint(3, 64, (10,), generator=torch.Generator().manual_seed(i))


class GlobalStream:
    """Global micro-batch k holds examples k*G .. k*G+G-1; a rank reads its slice. Its state (the
    global position) is the same on every rank, so the ranks can be regrouped on resume."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size, self.rank, self.world, self.position = batch_size, 0, 1, 0

    def shard(self, rank: int, world_size: int) -> None:
        self.rank, self.world = rank, world_size

    def __iter__(self):
        while True:
            start = self.position * self.batch_size * self.world + self.rank * self.batch_size
            ids = torch.stack([example(start + k) for k in range(self.batch_size)])
            self.position += 1
            yield {"input_ids": ids, "labels": ids.clone()}

    def state_dict(self) -> dict:
        return {"position": self.position, "global_batch": self.batch_size * self.world}

    def load_state_dict(self, state: dict) -> None:
        if state["global_batch"] != self.batch_size * self.world:
            raise ValueError(f"global batch {state['global_batch']} saved, {self.batch_size * self.world} now")
        self.position = state["position"]


def run(out: Path, world_size: int, max_steps: int) -> None:
    torch.manual_seed(0)
    cfg = model_config("gpt-tiny", ["vocab_size=64", "hidden_size=32", "intermediate_size=64", "max_positions=16",
                                    "dropout=0.0", "attention_dropout=0.0", "pad_token_id=0"])
    per_rank = GLOBAL_MICRO_BATCH // world_size
    tc = TrainConfig(lr=3e-3, schedule="constant", max_steps=max_steps, batch_size=per_rank, grad_accum=2, log_every=1,
                     save_every=3,
                     device="cpu", parallel="fsdp", progress=False, precision="fp32", compile=False)
    train(build_model(cfg, "causal-lm"), GlobalStream(per_rank), tc, out, resume="auto")


def _launch(out: Path, processes: int, max_steps: int) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
           "--master_addr", "127.0.0.1", "--master_port", str(port), __file__, str(out), str(max_steps)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _torchrun(out: Path, processes: int, max_steps: int) -> None:
    """Launch the workers on `out`; a launch whose worker died of a native abort in gloo (not a Python
    error: those fail at once) is repeated once on a fresh copy of `out`, with the abort reported."""
    pristine = out.with_name(out.name + ".before")
    if out.exists():
        shutil.copytree(out, pristine)
    proc = _launch(out, processes, max_steps)
    if proc.returncode != 0 and "Traceback (most recent call last)" not in _worker_errors(proc.stderr) \
            and "Signal 6 (SIGABRT)" in proc.stderr:
        warnings.warn(f"torchrun worker aborted natively, launching again: {proc.stderr[-2000:]}")
        shutil.rmtree(out, ignore_errors=True)
        if pristine.exists():
            shutil.copytree(pristine, out)
        proc = _launch(out, processes, max_steps)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _worker_errors(stderr: str) -> str:
    """The workers' own output, without torchrun's report (which always holds a traceback)."""
    return stderr.split("torch.distributed.elastic.multiprocessing.errors.ChildFailedError")[0].split(
        "Traceback (most recent call last):\n  File \"<frozen runpy>\"")[0]


@pytest.mark.slow
def test_sharded_checkpoint_resumes_on_one_and_three_processes(tmp_path):
    run(tmp_path / "straight", world_size=1, max_steps=6)
    _torchrun(tmp_path / "two", processes=2, max_steps=3)

    saved = list_checkpoints(tmp_path / "two")[-1]
    assert (saved / SHARDED_DIR / ".metadata").is_file() and not (saved / "model.safetensors").exists()
    recorded = json.loads((saved / "COMPLETE").read_text())["files"]
    assert any(name.startswith(f"{SHARDED_DIR}/") and name.endswith(".distcp") for name in recorded)

    shutil.copytree(tmp_path / "two", tmp_path / "three")
    run(tmp_path / "two", world_size=1, max_steps=6)  # 2 processes -> 1
    _torchrun(tmp_path / "three", processes=3, max_steps=6)  # 2 processes -> 3

    want = [r["loss"] for r in read_metrics(tmp_path / "straight", "train")]
    reference = load_file(tmp_path / "straight/final/model.safetensors")
    for name in ("two", "three"):
        losses = [r["loss"] for r in read_metrics(tmp_path / name, "train")]
        assert len(losses) == 6 and losses == pytest.approx(want, rel=1e-5), name
        weights = load_file(tmp_path / name / "final/model.safetensors")
        for key in reference:
            assert torch.allclose(weights[key], reference[key], atol=1e-5, rtol=0), (name, key)
    assert (list_checkpoints(tmp_path / "two")[-1] / "model.safetensors").is_file()  # one process: a full checkpoint
    assert (list_checkpoints(tmp_path / "three")[-1] / SHARDED_DIR).is_dir()


if __name__ == "__main__":  # a torchrun worker: OUT_DIR MAX_STEPS
    import faulthandler

    faulthandler.enable()  # a native abort prints where each thread was
    torch.set_num_threads(1)
    import torch.distributed as dist

    run(Path(sys.argv[1]), world_size=int(__import__("os").environ["WORLD_SIZE"]), max_steps=int(sys.argv[2]))
    dist.destroy_process_group()
