"""Two CPU processes (gloo, launched by torchrun) train like one process on the same global batch.

This file is also the torchrun worker: ``python -m torch.distributed.run --nproc_per_node 2
tests/distributed/test_ddp.py OUT_DIR ddp|fsdp``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plmkit.config import model_config
from plmkit.models import build_model
from plmkit.train.checkpoint import list_checkpoints, read_trainer_state
from plmkit.train.distributed import DistEnv, parallelize, resolve_device, shard_stream
from plmkit.train.loop import TrainConfig, train
from plmkit.train.metrics_log import read_metrics

GLOBAL_MICRO_BATCH = 4


def example(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Example i: random ids; a varying number of ignored label positions."""
    ids = torch.randint(3, 64, (10,), generator=torch.Generator().manual_seed(i))
    labels = ids.clone()
    labels[: i % 7] = -100
    return ids, labels


class ShardedStream:
    """Consecutive examples; after shard(rank, world) a rank reads examples rank, rank+world, ..."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size, self.position, self.rank, self.world = batch_size, 0, 0, 1

    def shard(self, rank: int, world_size: int) -> None:
        self.rank, self.world = rank, world_size

    def __iter__(self):
        while True:
            rows = [example(self.rank + self.world * (self.position + k)) for k in range(self.batch_size)]
            self.position += self.batch_size
            yield {"input_ids": torch.stack([r[0] for r in rows]), "labels": torch.stack([r[1] for r in rows])}

    def state_dict(self) -> dict:
        return {"position": self.position, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def run(out: Path, world_size: int, parallel: str = "ddp") -> None:
    """3 steps of a tiny GPT, micro-batches of 4 examples in all, 2 micro-batches per step."""
    torch.manual_seed(0)
    cfg = model_config("gpt-tiny", ["vocab_size=64", "hidden_size=32", "intermediate_size=64", "max_positions=16",
                                    "dropout=0.0", "attention_dropout=0.0", "pad_token_id=0"])
    per_rank = GLOBAL_MICRO_BATCH // world_size
    tc = TrainConfig(lr=3e-3, max_steps=3, batch_size=per_rank, grad_accum=2, log_every=1, save_every=3,
                     device="cpu", parallel=parallel, progress=False, precision="fp32")  # type: ignore[arg-type]
    train(build_model(cfg, "causal-lm"), ShardedStream(per_rank), tc, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_streams_are_sharded_or_refused():
    env = DistEnv(rank=1, world_size=2)
    stream = ShardedStream(2)
    shard_stream(stream, env)
    assert (stream.rank, stream.world) == (1, 2)
    assert next(iter(stream))["input_ids"].tolist() == [example(1)[0].tolist(), example(3)[0].tolist()]

    class Prebuilt:  # a stream constructed with its rank is accepted as is
        rank, world_size = 1, 2

    shard_stream(Prebuilt(), env)
    Prebuilt.rank = 0
    with pytest.raises(TypeError, match="rank=1, world_size=2"):
        shard_stream(Prebuilt(), env)  # would feed two ranks the same data


def test_single_process_needs_no_wrapping():
    model = torch.nn.Linear(2, 2)
    assert parallelize(model, DistEnv()) is model
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_current_env_answers_without_joining(monkeypatch):
    from plmkit.train.distributed import current_env

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert current_env().is_main and current_env().world_size == 1
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # a torchrun worker before (or without) init_distributed
    env = current_env()
    assert (env.rank, env.world_size, env.is_main) == (1, 2, False)
    assert not torch.distributed.is_initialized()  # asking joined nothing


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, parallel):
    run(tmp_path / "single", world_size=1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, str(tmp_path / "dist"), parallel]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    single = [r["loss"] for r in read_metrics(tmp_path / "single", "train")]
    dist = [r["loss"] for r in read_metrics(tmp_path / "dist", "train")]
    assert len(single) == 3 and dist == pytest.approx(single, rel=1e-5)
    a, b = load_file(tmp_path / "single/final/model.safetensors"), load_file(tmp_path / "dist/final/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=0), key
    saved = list_checkpoints(tmp_path / "dist")[-1]
    assert read_trainer_state(saved)["world_size"] == 2
    assert (saved / "rng-rank1.json").is_file() and (saved / "stream-rank1.json").is_file()


if __name__ == "__main__":  # a torchrun worker: OUT_DIR ddp|fsdp
    torch.set_num_threads(1)
    run(Path(sys.argv[1]), world_size=2, parallel=sys.argv[2])
