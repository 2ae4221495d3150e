"""The command line reads as one tool: the same flags everywhere, help with defaults, old spellings
kept as hidden aliases, `plmkit config` and `--version`, and errors spelled as the CLI spells them."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

import pytest

from plmkit.cli import COMMANDS, command_parser, main
from plmkit.config import describe_fields, field_docs, preset_names
from plmkit.config_cli import TASKS, config_fields_text
from plmkit.data.io import detect_format
from plmkit.version import __version__

WRITERS = ("tokenizer train", "prepare", "pretrain", "finetune", "eval", "predict", "curve", "explain", "demo")
"""Commands that write files: each takes -o/--output."""
TEXT_COLUMN = ("tokenizer train", "prepare", "finetune", "eval", "predict")


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, the tokenizer's actions as "tokenizer train" / "tokenizer encode"."""
    found = {}
    for name, (module, _) in COMMANDS.items():
        parser = command_parser(name, importlib.import_module(module))
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            found.update({f"{name} {action}": sub for action, sub in subs[0].choices.items()})
        else:
            found[name] = parser
    return found


PARSERS = parsers()


def parse(command: str, *args: str) -> argparse.Namespace:
    if command.startswith("tokenizer "):
        return command_parser("tokenizer", importlib.import_module(COMMANDS["tokenizer"][0])).parse_args(
            [command.split()[1], *args])
    return command_parser(command, importlib.import_module(COMMANDS[command][0])).parse_args(list(args))


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_option_has_help_and_its_default_is_shown(command):
    parser = PARSERS[command]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help, f"plmkit {command} {name} has no help"
        shown = action.default not in (None, False, [], "", argparse.SUPPRESS) and action.nargs != 0
        if shown and action.option_strings:
            help_text = " ".join(parser._get_formatter()._expand_help(action).split())
            assert "default" in help_text.lower(), f"plmkit {command} {name}: default not shown"
            assert " ".join(help_text.split()) in text


@pytest.mark.parametrize("command, option, default", [
    ("generate", "--max-new-tokens", "64"), ("generate", "--top-p", "off"), ("serve", "--host", "127.0.0.1"),
    ("serve", "--port", "8000"), ("prepare", "--holdout", "0.01"), ("pretrain", "--config", "bert-mini"),
    ("tokenizer train", "--min-frequency", "2"), ("curve", "--fractions", "0.01,0.1,1"),
])
def test_help_shows_these_defaults(command, option, default):
    text = " ".join(PARSERS[command].format_help().partition("options:")[2].split())
    assert re.search(re.escape(option) + r"(?:(?! --[a-z]).)*default: " + re.escape(default), text), text


@pytest.mark.parametrize("command", WRITERS)
def test_every_writer_takes_dash_o_and_the_old_out_still_works_hidden(command, capsys):
    parser = PARSERS[command]
    help_text = parser.format_help()
    assert "-o PATH, --output PATH" in help_text or re.search(r"-o \S+, --output \S+", help_text), help_text
    assert "--out " not in help_text and "--out," not in help_text
    required = {"tokenizer train": ["x.txt", "--vocab-size", "10"], "prepare": ["x.txt", "--tokenizer", "t"],
                "finetune": ["classification", "--model", "m", "--train", "t.tsv"], "eval": ["run", "--data", "d"],
                "predict": ["run", "--data", "d"], "explain": ["run", "text"],
                "curve": ["--pretrained", "p", "--scratch", "s", "--train", "t", "--dev", "d"]}.get(command, [])
    args = parse(command, *required, "--out", "somewhere")
    assert args.output == "somewhere"
    assert "--out is deprecated; use -o/--output" in capsys.readouterr().err
    assert parse(command, *required, "-o", "here").output == "here"


def test_renamed_flags_keep_their_old_spellings(capsys):
    assert parse("pretrain", "--data", "shards/", "-o", "r").shards == "shards/"
    assert "--data is deprecated; use --shards" in capsys.readouterr().err
    assert "--data" not in PARSERS["pretrain"].format_help() and "--shards" in PARSERS["pretrain"].format_help()
    args = parse("curve", "--pretrained", "p", "--scratch-preset", "bert-mini", "--train", "t", "--dev", "d", "-o", "x")
    assert args.scratch == "bert-mini" and "--scratch-preset is deprecated" in capsys.readouterr().err
    args = parse("prepare", "c.jsonl", "--tokenizer", "t", "-o", "s", "--field", "body")
    assert args.field == "body" and "--field is deprecated; use --text-column" in capsys.readouterr().err
    assert parse("prepare", "c.csv", "--tokenizer", "t", "-o", "s", "--column", "2").column == "2"
    assert parse("tokenizer train", "c.jsonl", "--vocab-size", "9", "-o", "t", "--field", "body").text_column == "body"
    for hidden in ("--field", "--column"):
        assert hidden not in PARSERS["prepare"].format_help()


@pytest.mark.parametrize("command", TEXT_COLUMN)
def test_one_way_to_name_the_text_column(command):
    assert "--text-column NAME" in PARSERS[command].format_help()


def test_pretrain_help_lists_the_presets():
    text = " ".join(PARSERS["pretrain"].format_help().split())
    for name in preset_names():
        assert name in text


def test_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"plmkit {__version__} (python ") and "torch" in out


def test_config_lists_every_field_with_default_and_doc(capsys):
    assert main(["config", "classification"]) == 0
    out = capsys.readouterr().out
    assert "text_column = null" in out and "found by its name" in out
    assert "train.lr = 5.0e-05" in out and "Peak learning rate" in out
    assert "train.warmup_ratio = null" in out and "labels = null" in out and "model = (required)" in out
    assert main(["config", "pretrain", "--config", "bert-mini"]) == 0
    out = capsys.readouterr().out
    assert "model.hidden_size = 256" in out and "data.path" in out and "train.tensorboard" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "nonsense"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("task", TASKS)
def test_every_listed_field_has_a_docstring(task):
    text = config_fields_text(task)
    keys = re.findall(r"^(\S+) = ", text, flags=re.M)
    assert len(keys) > 10
    undocumented = [k for k in keys if not re.search(rf"^{re.escape(k)} = .*\n    \S", text, flags=re.M)]
    assert not undocumented, f"{task}: fields without a docstring: {undocumented}"


def test_field_docs_reads_the_string_under_each_field():
    from dataclasses import dataclass

    @dataclass
    class Example:
        alpha: int = 1
        """The first
        one."""
        beta: str = "b"
        gamma: float = 0.5
        """Third."""

    assert field_docs(Example) == {"alpha": "The first one.", "beta": "", "gamma": "Third."}
    assert [f.key for f in describe_fields(Example)] == ["alpha", "beta", "gamma"]


def test_a_hub_name_gets_one_clear_message(tmp_path):
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    for extra in ([], ["--tokenizer", str(tmp_path)]):
        code, err = _run(["finetune", "classification", "--model", "bert-base-uncased", "--train", str(data),
                          "-o", str(tmp_path / "run"), *extra])
        assert code == 2 and err.count("\n") == 1, err
        assert "Hugging Face Hub name" in err and "local folders" in err and "huggingface-cli download" in err
        assert "pass --tokenizer" not in err and "is a preset" not in err
    code, err = _run(["eval", "bert-base-uncased", "--data", str(data)])
    assert code == 2 and "Hugging Face Hub name" in err
    code, err = _run(["eval", str(tmp_path / "no-such-run"), "--data", str(data)])
    assert code == 2 and "Hugging Face" not in err  # a path of the user's: no hub hint


def _run(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def test_errors_use_the_cli_spelling(tmp_path):
    with pytest.raises(ValueError, match=r"--set format=tsv"):
        detect_format(tmp_path / "data.unknown")
    # the loop's resume messages: tests/unit/test_run_output.py::test_resume_errors_are_spelled_as_the_cli


def test_curve_takes_a_training_run_for_both_models(tmp_path):
    from plmkit.recipes.curve import CurveConfig

    run = tmp_path / "bert"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cfg = CurveConfig(pretrained=str(run), scratch=str(run), train_file="t", dev_file="d", out=str(tmp_path / "c"))
    assert Path(cfg.pretrained) == run / "final"  # the tokenizer and weights are looked for there


def test_a_missing_extra_is_named_before_any_work(tmp_path, monkeypatch):
    from plmkit.extras import MissingExtraError
    from plmkit.recipes.demo import run_demo
    from plmkit.recipes.finetune import finetune

    monkeypatch.setitem(sys.modules, "sklearn.metrics", None)  # as if scikit-learn were not installed
    with pytest.raises(MissingExtraError, match=r"classification dev metrics needs scikit-learn, which is not "
                                                r"installed: pip install 'plmkit\[metrics\]'"):
        finetune("classification", model="bert-tiny", train_file="train.tsv", out=str(tmp_path / "run"))
    with pytest.raises(MissingExtraError, match=r"plmkit\[metrics\]"):
        run_demo(tmp_path / "demo")
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()
    code, err = _run(["finetune", "ner", "--model", "bert-tiny", "--train", "t.txt", "-o", str(tmp_path / "n")])
    assert code == 2 and "plmkit[metrics]" not in err  # seqeval is there: the error is about the data
