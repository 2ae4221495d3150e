"""Every example of the README is exercised here, in the README's order, on tiny data and models.

`EXERCISED` lists each command the README shows and what the test adds to it: settings that make
the run small (appended, so the README's own flags are parsed and used as written; a later
``--set`` of the same key wins) or, where the README names a size or a place that cannot hold on
a test machine (8 processes, port 8000, a 4-minute demo), the substitution. A README command
missing from the table, or a table entry no longer in the README, fails the fast test; the slow
test runs them all.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from plmkit.cli import COMMANDS, command_parser

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SAMPLES = REPO / "src" / "plmkit" / "demo_data"

TINY_BERT = ("--set model.hidden_size=32 --set model.num_heads=2 --set model.intermediate_size=64 "
             "--set model.num_layers=1 --set data.max_length=32 --set data.eval_examples=8 --set train.batch_size=4 "
             "--set train.eval_every=2 --set train.save_every=2 --set train.warmup_steps=1")
SMALL_FINETUNE = ("--set train.max_steps=4 --set train.eval_every=2 --set train.batch_size=8 --set max_length=32 "
                  "--set train.save_every=0")

EXERCISED: dict[str, str] = {
    # README command -> what the test appends ("" = run as written); "=> ..." = the command run instead
    "make demo": "=> make -n demo",
    "make test": "=> make -n test",
    'make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"':
        '=> make -n demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"',
    'make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"':
        '=> make -n test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"',
    "make bench": "=> make -n bench",
    "make clean": "=> make -n clean",
    ".venv/bin/plmkit demo --scale 0.1": "=> plmkit demo --scale 0.01 -o runs/demo",
    "plmkit tokenizer train corpus.txt --kind wordpiece --vocab-size 16000 -o tok/": "",
    "plmkit tokenizer train corpus.txt --kind bpe --vocab-size 16000 -o tok-bpe/": "",
    'plmkit tokenizer encode tok/ "Pretraining pays off."': "",
    "plmkit prepare corpus/ --tokenizer tok/ -o shards/ --holdout 0.01": "--holdout 0.1",
    "plmkit prepare corpus/ --tokenizer tok-bpe/ -o shards-bpe/": "--holdout 0.1",
    "plmkit pretrain --config bert-mini --shards shards/ -o runs/bert --set train.max_steps=2000":
        f"{TINY_BERT} --set train.max_steps=4",
    "plmkit pretrain --config bert-mini --shards shards/ -o runs/bert --resume auto --set train.max_steps=3000":
        f"{TINY_BERT} --set train.max_steps=6",
    "plmkit pretrain --config electra-mini --shards shards/ -o runs/electra": f"{TINY_BERT} --set train.max_steps=4",
    "plmkit pretrain --config gpt-tiny --shards shards-bpe/ -o runs/gpt":
        "--set model.hidden_size=32 --set model.num_heads=2 --set model.intermediate_size=64 --set model.num_layers=1 "
        "--set data.max_length=32 --set data.eval_examples=8 --set train.batch_size=4 --set train.max_steps=4 "
        "--set train.eval_every=2 --set train.save_every=0 --set train.warmup_steps=1",
    "plmkit config pretrain --config bert-mini": "",
    "plmkit finetune classification --model runs/bert --train train.tsv --dev dev.tsv -o runs/sst2 "
    "--set labels=negative,positive": SMALL_FINETUNE,
    "plmkit finetune ner --model runs/bert --train train.txt --dev dev.txt -o runs/ner": SMALL_FINETUNE,
    "plmkit finetune classification --model runs/bert --train train.tsv --dev dev.tsv -o runs/sst2-adapted "
    "--adapt-steps 200 --set labels=negative,positive":
        f"{SMALL_FINETUNE} --adapt-steps 3 --set adapt.batch_size=4 --set adapt.max_length=32",
    "plmkit eval runs/sst2 --data dev.tsv -o eval.json": "",
    "plmkit predict runs/sst2 --data new.txt -o predictions.jsonl": "",
    "plmkit curve --pretrained runs/bert --scratch runs/bert --train train.tsv --dev dev.tsv -o runs/curve":
        "--fractions 0.5,1 --set epochs=1 --set min_steps=1 --set recipe.max_length=32 "
        "--set recipe.train.batch_size=8 --set recipe.train.eval_every=0",
    'plmkit generate runs/gpt/final "Once upon a time" --top-p 0.9 --max-new-tokens 100 --stream': "",
    'plmkit generate runs/gpt/final "Once upon a time" --dtype int8': "",
    'plmkit explain runs/sst2 "a gripping, funny film" -o explain/': "",
    "plmkit serve runs/sst2 --port 8000": "--port {port}",
    "plmkit serve runs/gpt/final --dtype int8": "--port {port}",
    "torchrun --nproc_per_node 8 -m plmkit.cli pretrain --config bert-base --shards shards/ -o runs/bert "
    "--set train.parallel=fsdp": "=> torchrun --nproc_per_node 2 -m plmkit.cli pretrain --config bert-base "
                                 "--shards shards/ -o runs/bert-fsdp --set train.parallel=fsdp "
                                 f"{TINY_BERT} --set train.max_steps=2",
}


def readme_commands() -> list[str]:
    """The commands the README shows: each line of its bash blocks (comments cut, continuation lines
    joined) and the inline code that starts with make, torchrun or .venv/bin/."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = _strip_comment(line).strip()
            if line:
                commands.append(" ".join(line.split()))
    for span in re.findall(r"`((?:make|torchrun|\.venv/bin/)[^`\s]* [^`]+)`", text):
        commands.append(" ".join(span.split()))
    return list(dict.fromkeys(commands))


def _strip_comment(line: str) -> str:
    """The line without a trailing shell comment (a # outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if char in "\"'" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def python_example() -> str:
    return re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S).group(1)


def test_every_readme_command_is_exercised():
    shown = readme_commands()
    assert set(shown) == set(EXERCISED), (f"not exercised: {sorted(set(shown) - set(EXERCISED))}; "
                                          f"no longer in the README: {sorted(set(EXERCISED) - set(shown))}")


@pytest.mark.parametrize("command", [c for c in EXERCISED if c.startswith("plmkit ") or " plmkit.cli " in c])
def test_every_readme_command_parses(command):
    """The README's flags are the CLI's (a renamed flag fails here at once, without running anything)."""
    argv = shlex.split(command)
    argv = argv[argv.index("plmkit.cli") + 1:] if "plmkit.cli" in argv else argv[1:]
    module = importlib.import_module(COMMANDS[argv[0]][0])
    command_parser(argv[0], module).parse_args(argv[1:])


# --------------------------------------------------------------------------- running them


def write_inputs(folder: Path) -> None:
    """corpus.txt, corpus/, train.tsv / dev.tsv (SST-2 labels 0/1), train.txt / dev.txt (CoNLL), new.txt."""
    lines = [line for line in (SAMPLES / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")[:120]]
    (folder / "corpus.txt").write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    (folder / "corpus").mkdir()
    (folder / "corpus" / "plays.txt").write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    rows = (SAMPLES / "sst2-train.tsv").read_text(encoding="utf-8").splitlines()
    (folder / "train.tsv").write_text("\n".join(rows[:81]) + "\n", encoding="utf-8")
    (folder / "dev.tsv").write_text("\n".join([rows[0], *rows[81:121]]) + "\n", encoding="utf-8")
    (folder / "new.txt").write_text("a gripping, funny film\nthe plot is a mess\n", encoding="utf-8")
    sentences = ["EU rejects German call to boycott British lamb .", "Peter Blackburn lives in London ."]
    tags = [["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]]
    conll = "\n\n".join("\n".join(f"{w} {t}" for w, t in zip(s.split(), ts)) for s, ts in zip(sentences, tags))
    (folder / "train.txt").write_text((conll + "\n\n") * 8, encoding="utf-8")
    (folder / "dev.txt").write_text(conll + "\n", encoding="utf-8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_argv(command: str, extra: str) -> list[str]:
    """The process to run for a README command and its table entry."""
    if extra.startswith("=> "):
        command, extra = extra[3:], ""
    argv = shlex.split(command) + shlex.split(extra.format(port=free_port()))
    if argv[0] in ("plmkit", ".venv/bin/plmkit"):
        return [sys.executable, "-m", "plmkit.cli", *argv[1:]]
    if argv[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    if argv[0] == "make":
        return ["make", "-C", str(REPO), *argv[1:], "VENV=/nonexistent/venv"]
    return argv


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def serve_until_healthy(argv: list[str], cwd: Path) -> dict:
    port = int(argv[argv.index("--port", argv.index("--port") + 1) + 1]) if argv.count("--port") > 1 else \
        int(argv[argv.index("--port") + 1])
    proc = subprocess.Popen(argv, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{argv}: the server stopped: {proc.stdout.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    return json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"{argv}: no /health answer in 120 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_run_every_readme_example(tmp_path):
    write_inputs(tmp_path)
    outputs = {}
    for command in readme_commands():
        argv = to_argv(command, EXERCISED[command])
        if " serve " in f" {command} ":
            outputs[command] = serve_until_healthy(argv, tmp_path)
            continue
        done = subprocess.run(argv, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs[command] = done.stdout
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in outputs[
        'make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"']
    assert "tokens:" in outputs['plmkit tokenizer encode tok/ "Pretraining pays off."']
    assert "model.hidden_size = 256" in outputs["plmkit config pretrain --config bert-mini"]
    run = json.loads((tmp_path / "runs" / "bert" / "run.json").read_text())
    assert [c["argv"][-1] for c in run["commands"]][:1] and len(run["commands"]) == 2  # the run and its resume
    assert (tmp_path / "runs" / "sst2" / "best" / "README.md").is_file()
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["accuracy"] >= 0
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 and {p["label"] for p in predictions} <= {"negative", "positive"}
    assert (tmp_path / "runs" / "curve" / "curve.png").is_file() and (tmp_path / "explain").is_dir()
    assert (tmp_path / "runs" / "demo" / "report.html").is_file()
    demo, demo_out = tmp_path / "runs" / "demo", outputs[".venv/bin/plmkit demo --scale 0.1"]
    summary = json.loads((demo / "summary.json").read_text())
    best = json.loads((demo / "bert" / "best" / "best.json").read_text())
    assert summary["bert_heldout_mlm_loss"] == best["value"]  # the summary quotes the model it fine-tunes
    assert "bert/best (what finetune loads from this run)" in demo_out
    above = summary["bert_heldout_mlm_loss"] > summary["unigram_baseline_loss"]
    assert ("above the baseline after this few steps" in demo_out) == above
    assert (tmp_path / "runs" / "bert-fsdp" / "final" / "config.json").is_file()
    assert outputs["plmkit serve runs/sst2 --port 8000"]["task"] == "text-classification"
    example = subprocess.run([sys.executable, "-c", python_example() + "\nprint(clf(['a gripping, funny film']))"],
                             cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert example.returncode == 0, example.stderr
    assert "'label': 'positive'" in example.stdout or "'label': 'negative'" in example.stdout
