"""Output folders: markers, ownership, replacement rules, the folder lock and stale temp folders."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from plmkit.errors import BusyError, UserError
from plmkit import outputs
from plmkit.outputs import RUN, SHARDS, FolderLock, claim_output, inspect_output


def test_new_empty_and_foreign_folders(tmp_path):
    assert inspect_output(tmp_path / "new", RUN) == "new"
    (tmp_path / "empty").mkdir()
    assert inspect_output(tmp_path / "empty", RUN) == "empty"
    mine = tmp_path / "mine"
    (mine / "photos").mkdir(parents=True)
    (mine / "thesis.tex").write_text("x")
    with pytest.raises(UserError, match=r"holds files plmkit did not write \(photos/, thesis.tex\)"):
        inspect_output(mine, RUN)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        inspect_output(tmp_path / "file", RUN)


def test_a_marked_folder_of_another_kind_is_refused(tmp_path):
    with claim_output(tmp_path / "shards", SHARDS) as claim:
        claim.ensure()
    assert inspect_output(tmp_path / "shards", SHARDS) == "ours"
    with pytest.raises(UserError, match="is a shard folder .plmkit prepare., not a training run folder"):
        inspect_output(tmp_path / "shards", RUN)


def test_replace_only_what_plmkit_wrote(tmp_path):
    out = tmp_path / "shards"
    with claim_output(out, SHARDS) as claim:
        tmp = claim.temp_dir()
        (tmp / "meta.json").write_text("{}")
        (tmp / "train").mkdir()
        claim.publish(tmp)
    assert sorted(p.name for p in out.iterdir()) == [outputs.MARKER, "meta.json", "train"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"will not replace this folder.*\(notes.txt\)"):
        claim_output(out, SHARDS, replace=True)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    with claim_output(out, SHARDS, replace=True) as claim:
        tmp = claim.temp_dir()
        (tmp / "meta.json").write_text('{"new": 1}')
        claim.publish(tmp)
    assert json.loads((out / "meta.json").read_text()) == {"new": 1} and not (out / "train").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp, trash or lock left


def test_owned_subfolders_with_a_marker_are_checked_too(tmp_path):
    demo = tmp_path / "demo"
    with claim_output(demo, outputs.DEMO) as claim:
        claim.ensure()
        with claim_output(demo / "bert", RUN) as run:
            run.ensure()
            (demo / "bert" / "metrics.jsonl").write_text("")
    (demo / "bert" / "my-notes.md").write_text("keep me")
    with pytest.raises(UserError, match=r"bert/my-notes.md"):
        claim_output(demo, outputs.DEMO, replace=True)


def test_inputs_inside_the_output_are_refused(tmp_path):
    (tmp_path / "corpus.txt").write_text("text")
    with pytest.raises(UserError, match="input .*corpus.txt is inside the output folder"):
        claim_output(tmp_path, SHARDS, inputs=[tmp_path / "corpus.txt"])


def test_legacy_folders_are_recognised_by_their_signature(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"format": "plmkit-shards"}))
    (tmp_path / "train").mkdir()
    assert inspect_output(tmp_path, SHARDS) == "ours"
    (tmp_path / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UserError, match="did not write"):
        inspect_output(tmp_path, SHARDS)


# --------------------------------------------------------------------------- the lock

HOLD = """
import sys, time
from plmkit.outputs import FolderLock
lock = FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _holder(target) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_lock_refuses_and_a_dead_one_is_taken_over(tmp_path, caplog):
    target = tmp_path / "run"
    proc = _holder(target)
    try:
        with pytest.raises(BusyError, match=rf"in use by another plmkit run \(PID {proc.pid} on host"):
            claim_output(target, RUN)
        with pytest.raises(BusyError, match="in use"):
            outputs.check_not_busy(target)
    finally:
        proc.kill()
        proc.wait()
    assert FolderLock(target).path.is_file()  # SIGKILL left the file, the kernel dropped the flock
    with caplog.at_level(logging.WARNING), claim_output(target, RUN) as claim:
        claim.ensure()
    assert f"taking over the lock of a run that is gone (PID {proc.pid}" in caplog.text
    assert not FolderLock(target).path.exists()  # released cleanly


def test_a_lock_from_another_host_is_reported_not_broken(tmp_path):
    target = tmp_path / "run"
    lock = FolderLock(target).path
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "2024-01-01T00:00:00"}))
    with pytest.raises(BusyError, match=f"locked by a run on another host .PID 1 on host elsewhere.*delete {lock}"):
        claim_output(target, RUN)
    assert lock.is_file()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with FolderLock(tmp_path / "x"), FolderLock(tmp_path / "x"):
        assert FolderLock(tmp_path / "x").path.is_file()
    assert not FolderLock(tmp_path / "x").path.exists()


def test_stale_temp_folders_are_removed_or_reported(tmp_path, caplog):
    target = tmp_path / "shards"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".shards.tmp-{socket.gethostname()}-{dead.stdout.strip()}"
    live = tmp_path / f".shards.tmp-{socket.gethostname()}-{os.getpid()}"
    remote = tmp_path / ".shards.trash-otherhost-12"
    for folder in (stale, live, remote):
        folder.mkdir()
    with caplog.at_level(logging.WARNING):
        assert outputs.clean_stale_temps(target) == [stale]
    assert live.exists() and remote.exists() and "process 12 on host otherhost" in caplog.text
