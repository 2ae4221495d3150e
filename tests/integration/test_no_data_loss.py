"""Nothing of the user's is deleted or replaced, through the real command line: the data-loss
reproductions of `prepare --overwrite`, `demo -o`, `tokenizer train -o`, `predict -o`; and a
folder another run holds is refused (exit 6) before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plmkit.data.shards import prepare
from plmkit.data.tokenizer import Tokenizer
from plmkit.models import build_model, save_model
from plmkit.config import model_config

SRC = Path(__file__).resolve().parents[2] / "src"
CORPUS = "\n\n".join("\n".join(f"line {d} {i} of a small story about kings and rivers" for i in range(8))
                     for d in range(20)) + "\n"


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "plmkit.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    (folder / "c.txt").write_text(CORPUS)
    return Tokenizer.train([folder / "c.txt"], vocab_size=80).save(folder / "tok")


@pytest.fixture()
def user_dir(tmp_path) -> Path:
    """A folder of the user's: the corpus, notes, a sub-folder."""
    folder = tmp_path / "work"
    (folder / "drafts").mkdir(parents=True)
    (folder / "corpus.txt").write_text(CORPUS)
    (folder / "notes.md").write_text("my notes")
    (folder / "drafts" / "a.txt").write_text("draft")
    return folder


def test_prepare_overwrite_never_deletes_the_input_or_user_files(user_dir, tok):
    before = snapshot(user_dir)
    proc = cli("prepare", user_dir / "corpus.txt", "--tokenizer", tok, "-o", user_dir, "--overwrite")
    assert proc.returncode == 2, proc.stderr
    assert f"input {user_dir / 'corpus.txt'} is inside the output folder" in proc.stderr
    proc = cli("prepare", tok.parent / "c.txt", "--tokenizer", tok, "-o", user_dir, "--overwrite")
    assert proc.returncode == 2, proc.stderr
    assert "holds files plmkit did not write (corpus.txt, drafts/, notes.md)" in proc.stderr
    assert snapshot(user_dir) == before


def test_prepare_replaces_its_own_folder_only_when_nothing_else_is_there(tmp_path, tok):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "shards"
    assert cli("prepare", corpus, "--tokenizer", tok, "-o", out).returncode == 0
    corpus.write_text(CORPUS + "one more line\n")
    (out / "README.txt").write_text("about these shards")
    proc = cli("prepare", corpus, "--tokenizer", tok, "-o", out, "--overwrite")
    assert proc.returncode == 2 and "will not replace this folder" in proc.stderr and "README.txt" in proc.stderr
    assert (out / "README.txt").read_text() == "about these shards"
    (out / "README.txt").unlink()
    proc = cli("prepare", corpus, "--tokenizer", tok, "-o", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp, trash or lock left


def test_demo_never_wipes_a_folder_of_user_files(user_dir):
    before = snapshot(user_dir)
    proc = cli("demo", "-o", user_dir, "--scale", "0.01")
    assert proc.returncode == 2, proc.stderr
    assert "holds files plmkit did not write (corpus.txt, drafts/, notes.md)" in proc.stderr
    assert snapshot(user_dir) == before


def test_tokenizer_train_never_replaces_a_models_tokenizer(tmp_path, tok):
    cfg = model_config("bert-tiny", ["vocab_size=80", "hidden_size=16", "num_heads=2", "intermediate_size=32",
                                     "num_layers=1", "max_positions=16"])
    model_dir = save_model(build_model(cfg, "masked-lm"), tmp_path / "model", tokenizer=Tokenizer.load(tok))
    before = snapshot(model_dir)
    (tmp_path / "other.txt").write_text("completely different words here\n" * 40)
    proc = cli("tokenizer", "train", tmp_path / "other.txt", "--vocab-size", "60", "-o", model_dir)
    assert proc.returncode == 2, proc.stderr
    assert "holds files plmkit did not write (config.json, model.safetensors" in proc.stderr
    assert snapshot(model_dir) == before
    # its own folder is replaced: the second run's tokenizer, no leftovers of the first
    assert cli("tokenizer", "train", tmp_path / "other.txt", "--vocab-size", "60", "-o", tmp_path / "t").returncode == 0
    proc = cli("tokenizer", "train", tmp_path / "other.txt", "--kind", "bpe", "--vocab-size", "300", "-o",
               tmp_path / "t")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "t" / "vocab.txt").exists() and (tmp_path / "t" / "merges.txt").is_file()


def test_predict_never_writes_over_its_input(tmp_path):
    data = tmp_path / "dev.tsv"
    data.write_text("text\tlabel\ngood\t1\n")
    proc = cli("predict", tmp_path / "no-run", "--data", data, "-o", data)
    assert proc.returncode == 2 and "is also an input of this command" in proc.stderr, proc.stderr
    assert data.read_text() == "text\tlabel\ngood\t1\n"


HOLD = """
import sys, time
from plmkit.outputs import FolderLock
FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_folder_in_use_is_refused_before_anything_is_written(tmp_path, tok):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    shards = prepare(corpus, tok, tmp_path / "shards", progress=False)
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"story {i}\t{i % 2}\n" for i in range(20)))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(SRC)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in (["prepare", corpus, "--tokenizer", tok, "-o", tmp_path / "out"],
                     ["pretrain", "--config", "bert-tiny", "--data", shards, "-o", tmp_path / "out", "--resume",
                      "auto", "--set", "data.eval_examples=0"],
                     ["finetune", "classification", "--model", "bert-tiny", "--tokenizer", tok, "--train",
                      tmp_path / "train.tsv", "-o", tmp_path / "out"]):
            proc = cli(*args)
            assert proc.returncode == 6, (args, proc.stderr)
            assert f"in use by another plmkit run (PID {holder.pid} on host" in proc.stderr
        assert not (tmp_path / "out").exists()
    finally:
        holder.kill()
        holder.wait()
    # the killed holder left its lock file; the next run takes it over
    assert cli("prepare", corpus, "--tokenizer", tok, "-o", tmp_path / "out").returncode == 0


def test_explain_writes_only_into_its_own_folder(tmp_path, user_dir, tok):
    cfg = model_config("bert-tiny", ["vocab_size=80", "hidden_size=16", "num_heads=2", "intermediate_size=32",
                                     "num_layers=1", "max_positions=16"])
    model_dir = save_model(build_model(cfg, "masked-lm"), tmp_path / "model", tokenizer=Tokenizer.load(tok))
    before = snapshot(user_dir)
    proc = cli("explain", model_dir, "a story about kings", "-o", user_dir)
    assert proc.returncode == 2 and "holds files plmkit did not write" in proc.stderr, proc.stderr
    assert snapshot(user_dir) == before
    proc = cli("explain", model_dir, "a story about kings", "-o", tmp_path / "explain")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "explain" / "attention-layer0.png").is_file()
