"""Run every plmkit-vs-transformers benchmark with a short budget (`make bench`).

    python benchmarks/run_all.py            # ~7 min on an idle 2-core host: quick train, infer, generate
    python benchmarks/run_all.py --full     # adds bert-base / GPT-2 124M and more steps (~30+ min)
    python benchmarks/run_all.py --out runs/bench   # also keep each benchmark's results as JSON

Each benchmark runs in its own process (a clean allocator and thread pool), one after the other.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

QUICK = [
    ("train", ["bench_train.py", "--quick", "--models", "bert-mini,gpt-small"]),
    ("infer", ["bench_infer.py", "--quick", "--models", "bert-base"]),
    ("generate", ["bench_generate.py", "--batch", "1", "--modes", "greedy", "--rounds", "3"]),
]
FULL = [
    ("train", ["bench_train.py", "--models", "bert-mini,gpt-small,bert-base,gpt2"]),
    ("infer", ["bench_infer.py", "--models", "bert-mini,bert-base"]),
    ("generate", ["bench_generate.py"]),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="bigger models and the default (longer) step counts")
    p.add_argument("--out", type=Path, help="folder for one JSON file of results per benchmark")
    args = p.parse_args(argv)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    start = time.perf_counter()
    for name, cmd in FULL if args.full else QUICK:
        if not (HERE / cmd[0]).is_file():
            print(f"\n=== {name}: {cmd[0]} not found, skipped", flush=True)
            continue
        extra = ["--json", str(args.out / f"{name}.json")] if args.out else []
        print(f"\n=== {name}: {' '.join(cmd + extra)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:], *extra])
        print(f"=== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    print(f"\nall benchmarks: {time.perf_counter() - start:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
