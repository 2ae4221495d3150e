"""`plmkit tokenizer train | encode`: train a tokenizer on files, or show how one encodes a text.

``train -o DIR`` writes only into a new or empty folder or a tokenizer folder it wrote itself
(replacing it whole); any other folder, a model's say, is refused (see `plmkit.outputs`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from plmkit.cli_args import add_output, add_text_column
from plmkit.data.tokenizer import Tokenizer, _file_lines
from plmkit.files import no_space_as_error
from plmkit.outputs import TOKENIZER, claim_output


def cli_configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train a WordPiece or byte-level BPE tokenizer",
                           description="train a WordPiece or byte-level BPE tokenizer",
                           formatter_class=parser.formatter_class)
    train.add_argument("files", nargs="+", metavar="INPUT",
                       help="text files, folders or globs (.txt .jsonl .json .tsv .csv .parquet, .gz)")
    train.add_argument("--kind", choices=("wordpiece", "bpe"), default="wordpiece",
                       help="WordPiece (BERT) or byte-level BPE (GPT-2, RoBERTa)")
    train.add_argument("--vocab-size", type=int, required=True, help="tokens in the vocabulary, special ones included")
    train.add_argument("--lowercase", dest="lowercase", action="store_true", default=None,
                       help="lowercase (default for wordpiece)")
    train.add_argument("--no-lowercase", dest="lowercase", action="store_false", help="keep case (default for bpe)")
    train.add_argument("--min-frequency", type=int, default=2, help="fewest occurrences of a merged piece")
    train.add_argument("--style", choices=("bert", "gpt2", "roberta"), default=None,
                       help="special tokens and template (default: bert for wordpiece, gpt2 for bpe)")
    add_text_column(train, help="JSON field / CSV header of the text (default: found by its name: text, sentence, "
                                "content, ...)", deprecated=("--field",))
    add_output(train, "folder to write the tokenizer to: new, empty, or a tokenizer folder this command wrote "
                      "(replaced); any other folder is refused")
    encode = sub.add_parser("encode", help="print the tokens and ids of a text",
                            description="print the tokens and ids of a text", formatter_class=parser.formatter_class)
    encode.add_argument("tokenizer", help="tokenizer folder or file (or a model folder / training run)")
    encode.add_argument("text", help="the text to encode")
    encode.add_argument("--pair", default=None, help="second text of a pair")


def cli_run(args: argparse.Namespace) -> int:
    if args.action == "train":
        with claim_output(args.output, TOKENIZER, inputs=args.files, replace=True) as claim, \
                no_space_as_error(args.output, "the tokenizer was not written"):
            tok = Tokenizer.train([Path(f) for f in args.files], kind=args.kind, vocab_size=args.vocab_size,
                                  lowercase=args.lowercase, min_frequency=args.min_frequency, style=args.style,
                                  field_name=args.text_column, show_progress=True)
            tmp = claim.temp_dir()
            try:
                claim.publish(tok.save(tmp))
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp)
        print(f"{tok.kind} tokenizer, vocab size {tok.vocab_size}, saved to {args.output}")
        sample = next(_file_lines(args.files, args.text_column), "")[:200]
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
