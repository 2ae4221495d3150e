"""Does plmkit on a GPU compute what it computes on the CPU? Checks for benchmarks/gpu.sh.

On fixed tiny batches (BERT pretraining with padding and packed rows, a GPT with padded
prompts, a sequence classifier):
  - fp32 losses and gradient norms on the device equal the CPU's (TF32 off; rel 1e-4);
  - bf16 autocast on the device stays close to CPU fp32 (rel 3e-2);
  - a few steps of the training loop on the device give the CPU's losses (rel 1e-3), also with
    the blocks compiled (plmkit.train.blockwise) and fused AdamW;
  - SDPA's flash kernel takes plmkit's attention in bf16 when there is no padding (causal GPT,
    BERT without a mask), i.e. no explicit mask is built;
  - with 2+ GPUs (``--distributed``), DDP and FSDP2 under torchrun give the single-process losses.

    python benchmarks/gpu_check.py --device cuda
    python benchmarks/gpu_check.py --device cuda --distributed      # needs 2+ GPUs (torchrun inside)
    python benchmarks/gpu_check.py --device cpu --smoke             # the same code paths on the CPU (tests)

Prints one line per check and exits 1 when any fails.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from plmkit.config import ModelConfig, from_dict, model_config
from plmkit.models import build_model
from plmkit.train.loop import TrainConfig, train
from plmkit.train.metrics_log import read_metrics

TINY = {"hidden_size": 64, "num_heads": 4, "intermediate_size": 128, "num_layers": 2, "max_positions": 64,
        "vocab_size": 96, "pad_token_id": 0, "dropout": 0.0, "attention_dropout": 0.0}
FP32_REL, BF16_REL, LOOP_REL = 1e-4, 3e-2, 1e-3


def tiny(preset: str, **changes) -> ModelConfig:
    base = model_config(preset)
    return from_dict(ModelConfig, {**base.to_dict(), **TINY, "embedding_size": None, **changes}, "model")


def batches() -> dict[str, tuple[str, str, dict[str, torch.Tensor]]]:
    """name -> (preset, task, batch): fixed inputs from a seeded generator."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 96, (4, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 18:], mask[3, 9:] = 0, 0
    labels = torch.full_like(ids, -100)
    labels[:, 2:20:3] = ids[:, 2:20:3]
    segments = torch.tensor([0] * 10 + [1] * 10 + [-1] * 4).repeat(4, 1)
    return {
        "bert pretraining, padded": ("bert-tiny", "pretraining", {
            "input_ids": ids, "attention_mask": mask, "labels": labels * mask + -100 * (1 - mask),
            "next_sentence_label": torch.tensor([0, 1, 1, 0])}),
        "bert masked LM, packed rows": ("bert-tiny", "masked-lm", {
            "input_ids": ids, "segment_ids": segments, "labels": labels,
            "position_ids": torch.cat([torch.arange(10), torch.arange(10), torch.zeros(4, dtype=torch.long)]).repeat(4, 1)}),
        "gpt causal LM, padded": ("gpt-tiny", "causal-lm", {
            "input_ids": ids, "attention_mask": mask, "labels": torch.where(mask.bool(), ids, -100)}),
        "bert classification": ("bert-tiny", "sequence-classification", {
            "input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 0, 1])}),
    }


def loss_and_grad_norm(preset: str, task: str, batch: dict, device: torch.device, bf16: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(tiny(preset), task).to(device).train()
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in model.parameters() if p.grad is not None]))
    return loss.item(), norm.item()


def close(a: float, b: float, rel: float) -> bool:
    return math.isfinite(a) and abs(a - b) <= rel * max(abs(b), 1e-6)


class Stream:
    """Fixed LM micro-batches (right-padded rows); resumable."""

    def __init__(self, batch_size: int = 4) -> None:
        self.batch_size, self.i, self.rank, self.world = batch_size, 0, 0, 1

    def shard(self, rank: int, world_size: int) -> None:
        self.rank, self.world = rank, world_size

    def __iter__(self):
        while True:
            start = (self.i * self.world + self.rank) * self.batch_size
            rows = [torch.randint(3, 96, (20,), generator=torch.Generator().manual_seed(start + k))
                    for k in range(self.batch_size)]
            self.i += 1
            ids = torch.stack(rows)
            yield {"input_ids": ids, "labels": ids.clone()}

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]


def loop_losses(device: str, out: Path, compile: bool = False, parallel: str = "ddp", batch_size: int = 4,
                steps: int = 4) -> list[float]:
    torch.manual_seed(0)
    model = build_model(tiny("gpt-tiny"), "causal-lm")
    cfg = TrainConfig(lr=3e-3, max_steps=steps, batch_size=batch_size, grad_accum=2, log_every=1, save_every=0,
                      progress=False, precision="fp32", device=device, compile=compile, parallel=parallel)  # type: ignore[arg-type]
    return train(model, Stream(batch_size), cfg, out).losses


def flash_takes_it(device: torch.device) -> tuple[bool, str]:
    """Whether plmkit's bf16 attention runs with SDPA restricted to the flash kernel (no mask)."""
    if device.type != "cuda":
        return True, "not a CUDA device: nothing to check"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ids = torch.randint(3, 96, (2, 32), device=device)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
            build_model(tiny("gpt-tiny"), "causal-lm").to(device)(input_ids=ids, labels=ids).loss.backward()
            bert = build_model(tiny("bert-tiny"), "masked-lm").to(device)
            bert(input_ids=ids, attention_mask=None, labels=ids).loss.backward()
    except RuntimeError as e:
        return False, str(e).splitlines()[0][:200]
    return True, "causal GPT and unpadded BERT ran on the flash kernel"


def run_checks(device: torch.device, smoke: bool) -> list[tuple[str, bool, str]]:
    results: list[tuple[str, bool, str]] = []
    cpu = torch.device("cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for name, (preset, task, batch) in batches().items():
        want = loss_and_grad_norm(preset, task, batch, cpu, bf16=False)
        got = loss_and_grad_norm(preset, task, batch, device, bf16=False)
        ok = close(got[0], want[0], FP32_REL) and close(got[1], want[1], FP32_REL)
        results.append((f"{name}: fp32 loss, grad norm", ok, f"{device} {got[0]:.6f}, {got[1]:.5f}; "
                                                            f"cpu {want[0]:.6f}, {want[1]:.5f}"))
        half = loss_and_grad_norm(preset, task, batch, device, bf16=True)
        ok = close(half[0], want[0], BF16_REL) and close(half[1], want[1], BF16_REL * 3)
        results.append((f"{name}: bf16 autocast vs cpu fp32", ok, f"{half[0]:.5f}, {half[1]:.4f}"))
    with tempfile.TemporaryDirectory() as folder:
        base = loop_losses("cpu", Path(folder) / "cpu")
        mine = loop_losses(str(device), Path(folder) / "device")
        results.append(("training loop, 4 steps x 2 micro-batches", all(close(a, b, LOOP_REL) for a, b in zip(mine, base)),
                        f"{device} {[round(x, 5) for x in mine]} cpu {[round(x, 5) for x in base]}"))
        if not smoke:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                compiled = loop_losses(str(device), Path(folder) / "compiled", compile=True)
            fell_back = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
            results.append(("training loop, blocks compiled", not fell_back and all(
                close(a, b, LOOP_REL) for a, b in zip(compiled, base)), fell_back[0][:200] if fell_back else
                f"{[round(x, 5) for x in compiled]}"))
    from plmkit.train.optim import build_optimizer

    fused = build_optimizer(build_model(tiny("gpt-tiny"), "causal-lm").to(device), 1e-3).defaults.get("fused")
    results.append(("fused AdamW", bool(fused), f"fused={fused}"))
    results.append(("SDPA flash kernel, bf16, no mask", *flash_takes_it(device)))
    return results


def distributed_checks(device: torch.device) -> list[tuple[str, bool, str]]:
    """DDP and FSDP2 over every GPU (torchrun) against one process with the same global batch."""
    count = torch.cuda.device_count() if device.type == "cuda" else 2
    if count < 2:
        return [("DDP / FSDP2", True, f"skipped: {count} GPU (needs 2+); tests/distributed covers them on CPU")]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        per_rank = 4
        base = loop_losses(str(device), Path(folder) / "one", batch_size=per_rank * count)
        for parallel in ("ddp", "fsdp"):
            out = Path(folder) / parallel
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(count), "--master_port",
                   str(port), __file__, "--worker", str(out), "--parallel", parallel, "--device", device.type,
                   "--batch-size", str(per_rank)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if proc.returncode:
                results.append((f"{parallel.upper()} x{count}", False, proc.stderr.strip().splitlines()[-1][:300]))
                continue
            losses = [r["loss"] for r in read_metrics(out, "train")]
            results.append((f"{parallel.upper()} x{count} vs one process", all(close(a, b, LOOP_REL) for a, b in
                            zip(losses, base)) and len(losses) == len(base), f"{[round(x, 5) for x in losses]}"))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="skip the slow checks (compile); for tests on CPU")
    p.add_argument("--distributed", action="store_true", help="DDP and FSDP2 over every GPU instead")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--parallel", default="ddp", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:  # one torchrun rank
        loop_losses(args.device, args.worker, parallel=args.parallel, batch_size=args.batch_size)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here", file=sys.stderr)
        return 2
    results = distributed_checks(device) if args.distributed else run_checks(device, args.smoke)
    width = max(len(name) for name, _, _ in results)
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name.ljust(width)}  {detail}", flush=True)
    if args.json:
        args.json.write_text(json.dumps([{"check": n, "ok": ok, "detail": d} for n, ok, d in results], indent=2))
    failed = [name for name, ok, _ in results if not ok]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed" + (f"; failed: {', '.join(failed)}"
                                                                            if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
