"""The flags every `plmkit` command spells the same way, and the help format they share.

- `HelpFormatter`: ``--help`` shows each option's default (unless it is empty or the help text
  already says it) and hides the old spellings of renamed flags.
- `add_option`: an option with old spellings kept as hidden, deprecated aliases: they still
  work, with a note on stderr naming the new spelling.
- `add_output`, `add_text_column`, `add_set`, `add_device`: one spelling and one help text for
  ``-o/--output``, ``--text-column``, ``--set KEY=VALUE`` and ``--device`` in every command.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from typing import Any

_EMPTY_DEFAULTS = (None, False, "", [], ())


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help of every option; deprecated aliases left out of it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is argparse.SUPPRESS or "default" in text.lower() or action.required or action.nargs == 0
                or any(default == empty and type(default) is type(empty) for empty in _EMPTY_DEFAULTS)
                or (not action.option_strings and action.nargs not in ("?", "*"))):
            return text
        return f"{text} (default: %(default)s)"

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "deprecated", ())
        if hidden:
            action = copy.copy(action)
            action.option_strings = [s for s in action.option_strings if s not in hidden]
        return super()._format_action_invocation(action)


class AliasedStore(argparse.Action):
    """``store`` that accepts old spellings (`deprecated`) too, noting the new one on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, deprecated: Sequence[str] = (),
                 instead: str | None = None, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.deprecated = tuple(deprecated)
        self.instead = instead or "/".join(s for s in option_strings if s not in self.deprecated)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if option_string in self.deprecated:
            print(f"{parser.prog}: {option_string} is deprecated; use {self.instead}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *names: str,
               deprecated: Sequence[str] = (), **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(*names, **kwargs)`` that also accepts the `deprecated` spellings."""
    if not deprecated:
        return parser.add_argument(*names, **kwargs)
    return parser.add_argument(*names, *deprecated, action=AliasedStore, deprecated=tuple(deprecated), **kwargs)


def add_deprecated(parser: argparse.ArgumentParser, name: str, instead: str, **kwargs: Any) -> argparse.Action:
    """A hidden option kept for old command lines: it works as before, with a note naming `instead`."""
    return parser.add_argument(name, action=AliasedStore, deprecated=(name,), instead=instead,
                               help=argparse.SUPPRESS, **kwargs)


def add_output(parser: argparse.ArgumentParser, help: str, *, required: bool = True,
               default: str | None = None, metavar: str = "PATH") -> argparse.Action:
    """``-o/--output`` (the old ``--out`` still works)."""
    return add_option(parser, "-o", "--output", deprecated=("--out",), required=required, default=default,
                      metavar=metavar, help=help)


def add_text_column(parser: argparse.ArgumentParser, help: str | None = None,
                    deprecated: Sequence[str] = ()) -> argparse.Action:
    """``--text-column NAME|INDEX``: the column (header name, JSON key or 0-based index) of the text."""
    return add_option(parser, "--text-column", deprecated=deprecated, default=None, metavar="NAME",
                      help=help or "column of the text: header name, JSON key or 0-based index (default: found "
                                    "by its name: text, sentence, content, review, ...)")


def add_set(parser: argparse.ArgumentParser, example: str, what: str = "config field") -> argparse.Action:
    """``--set KEY=VALUE`` (repeatable); `plmkit config TASK` lists the keys."""
    return parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                               help=f"set a {what}, e.g. {example} (repeatable; `plmkit config` lists every key)")


def add_device(parser: argparse.ArgumentParser) -> argparse.Action:
    """``--device``: where the model runs."""
    return parser.add_argument("--device", default=None,
                               help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")


def column_value(text: str | None) -> str | int | None:
    """A column given on the command line: a 0-based index ("2") or a name."""
    if text is None:
        return None
    return int(text) if text.isdigit() else text


__all__ = ["AliasedStore", "HelpFormatter", "add_deprecated", "add_device", "add_option", "add_output", "add_set",
           "add_text_column", "column_value"]
