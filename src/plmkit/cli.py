"""The `plmkit` command: one explicit table of subcommands.

Each subcommand lives in the module that owns the feature, which provides
``cli_configure(parser)`` to declare its arguments and ``cli_run(args) -> int | None`` to run.
Modules are imported only when their subcommand is used, so `plmkit --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "tokenizer": ("plmkit.data.tokenizer", "train a WordPiece or byte-level BPE tokenizer"),
    "prepare": ("plmkit.data.shards", "tokenize a corpus into token shards"),
    "pretrain": ("plmkit.recipes.pretrain", "pretrain a BERT / GPT / seq2seq model"),
    "finetune": ("plmkit.recipes.finetune", "fine-tune a model on a downstream task"),
    "eval": ("plmkit.recipes.evaluate", "evaluate a fine-tuned model on a labelled file"),
    "predict": ("plmkit.recipes.predict", "batch inference to CSV/JSONL"),
    "curve": ("plmkit.recipes.curve", "learning curves: pretrained vs from scratch"),
    "generate": ("plmkit.infer.generation", "generate text from a decoder or seq2seq model"),
    "serve": ("plmkit.infer.server", "serve a model over HTTP with a small web page"),
    "explain": ("plmkit.explain", "attention maps and token attributions for a model"),
    "demo": ("plmkit.recipes.demo", "the end-to-end demo on bundled data"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plmkit", description="Your own pretrained language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("plmkit"):
            print(f"plmkit {name}: not available in this version ({e.name} missing)", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"plmkit {name}", description=help_text)
    module.cli_configure(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.cli_run(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        print(f"plmkit {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
