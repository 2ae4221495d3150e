"""What a training run tells its user: the start block, eval lines as they happen, warnings,
run.json's record (commands of every resume, git commit, inputs), the model card, the plots."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from plmkit.extras import MissingExtraError
from plmkit.metrics import confusion_figure
from plmkit.train.loop import TrainConfig, train
from plmkit.train.metrics_log import MetricsLog, curve_series, loss_figure
from plmkit.train.model_card import CARD_FILE
from plmkit.train.run_record import fingerprint, format_start_block, plan_warnings, run_plan

REPO = Path(__file__).resolve().parents[2]


class TokenStream:
    """Endless micro-batches of random tokens (language modelling), with a resumable position and
    a description, as the loop's data streams give one."""

    def __init__(self, batch_size: int = 2, examples: int = 40) -> None:
        self.batch_size, self.examples, self.position = batch_size, examples, 0

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.position)
            ids = torch.randint(3, 64, (self.batch_size, 8), generator=g)
            self.position += 1
            yield {"input_ids": ids, "labels": ids.clone()}

    def describe(self) -> dict:
        return {"examples": self.examples, "tokens_per_example": 8, "what": "random tokens"}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def eval_fn(model) -> dict[str, float]:
    return {"eval_loss": 3.5, "accuracy": 0.25}


def test_start_block_and_eval_lines(tmp_path, tiny_gpt, capsys):
    cfg = TrainConfig(max_steps=4, batch_size=2, grad_accum=2, warmup_steps=1, eval_every=2, save_every=0,
                      log_every=1, progress=False, precision="fp32")
    train(tiny_gpt(), TokenStream(), cfg, tmp_path / "run", eval_fn=eval_fn, info={"labels": "2 (a, b)"})
    err = capsys.readouterr().err
    block = err[err.index("training\n"):]
    for line in ("data           random tokens", "examples       40", "epochs         0.4",
                 "token budget   up to 128 tokens (16 examples)", "steps          4",
                 "batch          2 per device x 2 accumulation x 1 process = 4 examples per step",
                 "learning rate  0.0005, linear schedule, warmup 1 steps", "precision      fp32",
                 "device         cpu", "labels         2 (a, b)", f"output         {tmp_path / 'run'}"):
        assert line in block, block
    params = sum(p.numel() for p in tiny_gpt().parameters())
    assert f"parameters     {params:,}" in block
    assert err.count("training\n") == 1
    assert "eval step 2/4: eval_loss 3.5, accuracy 0.25" in err and "eval step 4/4: eval_loss 3.5" in err
    assert err.index("training\n") < err.index("eval step 2/4")


def test_warmup_longer_than_the_run_is_warned(tmp_path, tiny_gpt, capsys):
    cfg = TrainConfig(max_steps=3, batch_size=2, warmup_steps=10, save_every=0, progress=False)
    train(tiny_gpt(), TokenStream(), cfg, tmp_path / "run")
    err = capsys.readouterr().err
    assert "warning: train.max_steps (3) is below the warmup (10 steps)" in err
    assert "train.warmup_ratio" in err


def test_warmup_ratio_is_a_train_setting_for_every_recipe():
    cfg = TrainConfig(lr=1.0, max_steps=40, warmup_steps=0, warmup_ratio=0.1, schedule="constant")
    assert cfg.warmup == 4
    assert cfg.lr_at(1) == pytest.approx(0.25) and cfg.lr_at(4) == pytest.approx(1.0)
    assert TrainConfig(max_steps=40, warmup_steps=7).warmup == 7
    with pytest.raises(ValueError, match="train.warmup_ratio must be in"):
        TrainConfig(warmup_ratio=1.5)
    plan = run_plan(cfg, out_dir=Path("x"), device="cpu", precision="fp32", world_size=1, parameters=10,
                    trainable=10, start_step=0)
    assert plan["warmup_steps"] == 4 and not plan_warnings(plan)
    assert "warmup 4 steps, ratio 0.1" in format_start_block(plan)


def test_run_json_keeps_every_command_git_and_inputs(tmp_path, tiny_gpt, monkeypatch):
    data = tmp_path / "train.txt"
    data.write_text("some training text\n" * 10)
    run = tmp_path / "run"
    cfg = TrainConfig(max_steps=2, batch_size=2, save_every=2, progress=False, log_every=1)
    monkeypatch.setattr(sys, "argv", ["plmkit", "pretrain", "-o", str(run)])
    train(tiny_gpt(), TokenStream(), cfg, run, inputs=[data])
    first = json.loads((run / "run.json").read_text())
    assert [c["argv"] for c in first["commands"]] == [["plmkit", "pretrain", "-o", str(run)]]
    assert first["inputs"] == [{"path": str(data), "size": data.stat().st_size,
                                "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}]
    assert first["plan"]["steps"] == 2 and first["plan"]["examples"] == 40
    if (REPO / ".git").exists():  # plmkit runs from its checkout here
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert first["git"]["plmkit"]["commit"] == head.strip()
    monkeypatch.setattr(sys, "argv", ["plmkit", "pretrain", "-o", str(run), "--resume", "auto"])
    train(tiny_gpt(), TokenStream(), TrainConfig(max_steps=4, batch_size=2, save_every=2, progress=False),
          run, resume="auto", inputs=[data])
    second = json.loads((run / "run.json").read_text())
    assert [c["argv"][-2:] for c in second["commands"]] == [["-o", str(run)], ["--resume", "auto"]]
    assert [c["start_step"] for c in second["commands"]] == [0, 2]


def test_a_shard_folder_is_fingerprinted_by_its_meta(tmp_path):
    (tmp_path / "shards" / "train").mkdir(parents=True)
    (tmp_path / "shards" / "meta.json").write_text('{"format": "plmkit-shards"}')
    (tmp_path / "shards" / "train" / "tokens.bin").write_bytes(b"\0" * 100)
    entry = fingerprint(tmp_path / "shards")
    assert entry["meta_sha256"] == hashlib.sha256(b'{"format": "plmkit-shards"}').hexdigest()
    assert entry["size"] == 100 + len('{"format": "plmkit-shards"}')
    assert fingerprint(tmp_path / "gone") == {"path": str(tmp_path / "gone"), "missing": True}


def test_resume_errors_are_spelled_as_the_cli(tmp_path, tiny_gpt):
    cfg = TrainConfig(max_steps=2, batch_size=2, save_every=2, progress=False)
    train(tiny_gpt(), TokenStream(), cfg, tmp_path / "run")
    with pytest.raises(ValueError) as error:
        train(tiny_gpt(), TokenStream(), cfg, tmp_path / "run")
    assert "--resume auto" in str(error.value) and "resume=" not in str(error.value)


def test_final_model_gets_a_model_card(tmp_path, tiny_gpt):
    cfg = TrainConfig(max_steps=2, batch_size=2, eval_every=1, save_every=0, progress=False)
    result = train(tiny_gpt(), TokenStream(), cfg, tmp_path / "run", eval_fn=eval_fn)
    card = (result.final_dir / CARD_FILE).read_text()
    _, header, body = card.split("---\n", 2)
    meta = yaml.safe_load(header)
    assert meta["library_name"] == "plmkit" and meta["pipeline_tag"] == "text-generation"
    results = meta["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in results["metrics"]} == {"eval_loss": 3.5, "accuracy": 0.25}
    for section in ("## Task", "## Data", "## Training", "## Results", "## How to use", "## Command", "## Limits"):
        assert section in body
    assert "- steps: 2" in body and "Generated text can be fluent and wrong" in body


def test_loss_plot_draws_every_eval_point_on_its_axis():
    records = ([{"kind": "train", "step": s, "loss": 5.0 - s / 10} for s in range(1, 11)]
               + [{"kind": "eval", "step": s, "eval_loss": 4.0 - s / 10, "eval_ppl": 50.0, "mlm_accuracy": s / 20,
                   "bleu": 10.0 * s / 5} for s in (5, 10)])
    train_points, losses, scores = curve_series(records)
    assert len(train_points) == 10 and losses == {"eval_loss": [(5, 3.5), (10, 3.0)]}
    assert scores == {"mlm_accuracy": [(5, 0.25), (10, 0.5)], "bleu /100": [(5, 0.1), (10, 0.2)]}
    fig = loss_figure(records, "bert: training")
    left, right = fig.axes
    assert left.get_title() == "bert: training" and left.get_ylabel() == "loss" and right.get_ylabel() == "eval score"
    drawn = {line.get_label(): line.get_xydata().tolist() for ax in fig.axes for line in ax.get_lines()}
    assert drawn["eval loss"] == [[5, 3.5], [10, 3.0]]
    assert drawn["eval mlm accuracy"] == [[5, 0.25], [10, 0.5]] and drawn["eval bleu /100"] == [[5, 0.1], [10, 0.2]]
    assert "eval eval ppl" not in drawn and "eval_ppl" not in str(drawn)  # a perplexity restates the loss
    only_scores = [{"kind": "eval", "step": 3, "accuracy": 0.8}]
    assert loss_figure(only_scores, "t").axes[1].get_lines()[0].get_xydata().tolist() == [[3, 0.8]]


def test_confusion_matrix_has_label_names_a_labelled_colour_bar_and_a_title():
    fig = confusion_figure(np.array([[5, 1], [2, 7]]), ["negative", "positive"], title="sst2, dev set")
    ax, bar = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["negative", "positive"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["negative", "positive"]
    assert bar.get_ylabel() == "examples" and "sst2, dev set" in ax.get_title()
    normalized = confusion_figure(np.array([[5, 1], [2, 7]]), ["a", "b"], normalize=True)
    assert normalized.axes[1].get_ylabel() == "fraction of the reference class"


def test_tensorboard_requested_but_missing_names_the_extra(tmp_path, tiny_gpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'plmkit\[tensorboard\]'"):
        MetricsLog(tmp_path, tensorboard=True)
    log = MetricsLog(tmp_path, tensorboard=None)  # "when installed": here it is not, and that is fine
    log.log({"kind": "train", "step": 1, "loss": 1.0})
    log.close()
    assert not (tmp_path / "tensorboard").exists()
    cfg = TrainConfig(max_steps=1, batch_size=2, tensorboard=True, progress=False)
    with pytest.raises(MissingExtraError, match=r"train.tensorboard=true .*'plmkit\[tensorboard\]'"):
        train(tiny_gpt(), TokenStream(), cfg, tmp_path / "run")
