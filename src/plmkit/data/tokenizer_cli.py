"""`plmkit tokenizer train | encode`: train a tokenizer on files, or show how one encodes a text.

``train -o DIR`` writes only into a new or empty folder or a tokenizer folder it wrote itself
(replacing it whole); any other folder, a model's say, is refused (see `plmkit.outputs`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from plmkit.data.tokenizer import Tokenizer, _file_lines
from plmkit.files import no_space_as_error
from plmkit.outputs import TOKENIZER, claim_output


def cli_configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train a WordPiece or byte-level BPE tokenizer")
    train.add_argument("files", nargs="+", help="text files, folders or globs (.txt .jsonl .json .tsv .csv, .gz)")
    train.add_argument("--kind", choices=("wordpiece", "bpe"), default="wordpiece")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--lowercase", dest="lowercase", action="store_true", default=None,
                       help="lowercase (default for wordpiece)")
    train.add_argument("--no-lowercase", dest="lowercase", action="store_false", help="keep case (default for bpe)")
    train.add_argument("--min-frequency", type=int, default=2)
    train.add_argument("--style", choices=("bert", "gpt2", "roberta"), default=None,
                       help="special tokens and template (bpe: gpt2 or roberta)")
    train.add_argument("--field", default=None, help="JSON field / CSV header of the text (default: text)")
    train.add_argument("-o", "--output", required=True,
                       help="folder to write the tokenizer to: new, empty, or a tokenizer folder this command wrote "
                            "(replaced); any other folder is refused")
    encode = sub.add_parser("encode", help="print the tokens and ids of a text")
    encode.add_argument("tokenizer", help="tokenizer folder or file")
    encode.add_argument("text")
    encode.add_argument("--pair", default=None, help="second text of a pair")


def cli_run(args: argparse.Namespace) -> int:
    if args.action == "train":
        with claim_output(args.output, TOKENIZER, inputs=args.files, replace=True) as claim, \
                no_space_as_error(args.output, "the tokenizer was not written"):
            tok = Tokenizer.train([Path(f) for f in args.files], kind=args.kind, vocab_size=args.vocab_size,
                                  lowercase=args.lowercase, min_frequency=args.min_frequency, style=args.style,
                                  field_name=args.field, show_progress=True)
            tmp = claim.temp_dir()
            try:
                claim.publish(tok.save(tmp))
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp)
        print(f"{tok.kind} tokenizer, vocab size {tok.vocab_size}, saved to {args.output}")
        sample = next(_file_lines(args.files, args.field), "")[:200]
        _print_encoding(tok, sample, None)
        return 0
    tok = Tokenizer.load(args.tokenizer)
    _print_encoding(tok, args.text, args.pair)
    return 0


def _print_encoding(tok: Tokenizer, text: str, pair: str | None) -> None:
    enc = tok.encode(text, pair)
    print(f"text:   {text!r}" + (f"  pair: {pair!r}" if pair is not None else ""))
    print(f"tokens: {enc.tokens}")
    print(f"ids:    {enc.ids}")
