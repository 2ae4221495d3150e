"""One error surface: each kind of error gives one line and its exit code; bugs show a traceback."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from plmkit.cli import run_command
from plmkit.config import ConfigError
from plmkit.errors import BusyError, DataError, IntegrityError, Interrupted, NonFiniteError, ResourceError
from plmkit.files import no_space

SRC = Path(__file__).resolve().parents[2] / "src"


def raising(error: BaseException):
    def run() -> int:
        raise error

    return run


@pytest.mark.parametrize("error, code, text", [
    (ConfigError("model.num_heads must be between 1 and 1,024, got 0"), 2, "model.num_heads"),
    (DataError("corpus.txt", 7, "invalid UTF-8"), 2, "corpus.txt:7: invalid UTF-8"),
    (ValueError("unknown task 'x'"), 2, "unknown task"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "train.tsv"), 2,
     "no such file or directory at train.tsv"),
    (IntegrityError("shards/train/tokens.bin: 12 bytes"), 3, "tokens.bin"),
    (no_space("/runs/x", "the checkpoint of step 3 was not written"), 4, "no space left on device at /runs/x"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"), 4, "read-only file system at /mnt/ro/x"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "notes.txt/run"), 4, "not a directory at notes.txt/run"),
    (OSError(errno.ENOSPC, "No space left on device"), 4, "no space left on device"),
    (NonFiniteError("step 3: loss nan"), 5, "step 3: loss nan"),
    (BusyError("runs/x: in use by another plmkit run"), 6, "in use"),
    (Interrupted("SIGTERM: training stopped after step 4", signal.SIGTERM), 143, "SIGTERM"),
    (Interrupted("SIGINT: training stopped after step 4", signal.SIGINT), 130, "SIGINT"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_each_error_is_one_line_and_its_exit_code(error, code, text, capsys):
    assert run_command("x", raising(error)) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("plmkit x: error: ") and text in err, err
    assert "Traceback" not in err


def test_resource_error_is_also_an_oserror():
    e = no_space("/data", "writing")
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC and str(e) == "no space left on device at /data: writing"


@pytest.mark.parametrize("bug", [RuntimeError("bug"), KeyError("vocab_size"), TypeError("unsupported operand")])
def test_a_bug_is_not_hidden(bug):
    with pytest.raises(type(bug)):
        run_command("x", raising(bug))


def test_debug_shows_the_traceback_too(capsys):
    assert run_command("x", raising(ConfigError("bad")), debug=True) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("plmkit x: error: bad")


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.run([sys.executable, "-m", "plmkit.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=120)


def test_real_cli_bad_config_names_the_field_and_debug_flag(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 64, "n_embd": "wide",
                                                    "n_layer": 1, "n_head": 2}))
    (tmp_path / "data.txt").write_text("hello\n")
    proc = cli("predict", str(model), "--data", str(tmp_path / "data.txt"), "-o", str(tmp_path / "p.jsonl"),
               "--task", "lm")
    assert proc.returncode == 2, proc.stderr
    assert "n_embd (model.hidden_size): expected an integer, got 'wide'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    for debug in (["--debug"], []):
        env = {} if debug else {"PLMKIT_DEBUG": "1"}
        proc = cli(*debug, "predict", str(model), "--data", str(tmp_path / "data.txt"), "-o",
                   str(tmp_path / "p.jsonl"), "--task", "lm", env=env)
        assert proc.returncode == 2 and "Traceback" in proc.stderr, proc.stderr


def test_real_cli_file_where_a_folder_is_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "corpus.txt").write_text("some text to train on\n" * 50)
    proc = cli("tokenizer", "train", str(tmp_path / "corpus.txt"), "--vocab-size", "60", "-o",
               str(tmp_path / "notes.txt" / "tok"))
    assert proc.returncode == 4, proc.stderr
    assert "not a directory at" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
