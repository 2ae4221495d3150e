"""The `plmkit` command: one explicit table of subcommands.

Each subcommand lives in the module that owns the feature, which provides
``cli_configure(parser)`` to declare its arguments and ``cli_run(args) -> int | None`` to run.
Modules are imported only when their subcommand is used, so `plmkit --help` stays fast.

Errors meet one handler (`run_command`): plmkit's own errors (`plmkit.errors`), a missing file
and the operating system's refusals become one line on stderr and an exit code (the table is in
`plmkit.errors`); anything else is a bug and shows its traceback. ``--debug`` (before or after
the command) or ``PLMKIT_DEBUG=1`` shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Callable

from plmkit.cli_args import HelpFormatter
from plmkit.errors import PlmkitError
from plmkit.version import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "tokenizer": ("plmkit.data.tokenizer_cli", "train a WordPiece or byte-level BPE tokenizer"),
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
    "config": ("plmkit.config_cli", "list the settings of a task (--set KEY=VALUE) with defaults and docs"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plmkit", description="Your own pretrained language models.",
                                     epilog="`plmkit COMMAND --help` shows a command's options and their defaults. "
                                            "--debug (or PLMKIT_DEBUG=1) shows the traceback of any error.")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def version_text() -> str:
    """"plmkit X (python Y, torch Z)", without importing torch."""
    import importlib.metadata
    import platform

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    return f"plmkit {__version__} (python {platform.python_version()}, torch {torch_version})"


def command_parser(name: str, module) -> argparse.ArgumentParser:
    """The parser of one command: its module's arguments, --debug, and the shared help format."""
    parser = argparse.ArgumentParser(prog=f"plmkit {name}", description=COMMANDS[name][1],
                                     formatter_class=HelpFormatter)
    module.cli_configure(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("PLMKIT_DEBUG", "") not in ("", "0")
    if argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    if argv[:1] in (["--version"], ["-V"]):
        print(version_text())
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("plmkit"):
            print(f"plmkit {name}: not available in this version ({e.name} missing)", file=sys.stderr)
            return 2
        raise
    args = command_parser(name, module).parse_args(rest)
    return run_command(name, lambda: module.cli_run(args), debug=debug or args.debug)


def run_command(name: str, run: Callable[[], int | None], debug: bool = False) -> int:
    """Call `run`; turn the errors a user can meet into one line on stderr and an exit code.

    A bug (any other exception) propagates with its traceback. With `debug`, every error
    prints its traceback before the one-line message.
    """
    try:
        return int(run() or 0)
    except KeyboardInterrupt:
        return _fail(name, "interrupted", 130, debug)
    except PlmkitError as e:
        return _fail(name, str(e), e.exit_code, debug)
    except FileNotFoundError as e:  # a path the user named does not exist
        return _fail(name, _os_error_text(e), 2, debug)
    except OSError as e:  # the system refused: no space, permission, read-only, a file where a folder goes
        return _fail(name, _os_error_text(e), 4, debug)
    except ValueError as e:  # plmkit's modules raise ValueError for bad input (see plmkit.errors.UserError)
        return _fail(name, str(e), 2, debug)


def _fail(name: str, message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"plmkit {name}: error: {message}", file=sys.stderr)
    return code


def _os_error_text(e: OSError) -> str:
    """"no space left on device at PATH", "permission denied at PATH", or the error's own words."""
    if e.strerror and e.filename is not None:
        reason = "no space left on device" if e.errno == errno.ENOSPC else e.strerror[:1].lower() + e.strerror[1:]
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
        return f"{reason} at {where}"
    if e.errno == errno.ENOSPC:
        return "no space left on device"
    return str(e) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
