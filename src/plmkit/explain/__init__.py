"""Explanations: attention maps per layer and head, integrated-gradients token attributions.

    from plmkit.explain import explain_text, render_text, text_attention, plot_attention
    attribution = explain_text(model, tokenizer, "a gripping, funny film")
    print(render_text(attribution))
    tokens, maps = text_attention(model, tokenizer, "a gripping, funny film")   # maps (L, H, T, T)
    plot_attention(maps[-1], tokens, "attention.png")

Command line: ``plmkit explain RUN_DIR TEXT [--pair TEXT] [--method ig|attention] -o OUT``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from plmkit.cli_args import add_output
from plmkit.explain.attention import (
    attention_maps, attention_modules, attention_probabilities, plot_attention, text_attention,
)
from plmkit.explain.attribution import (
    Attribution, explain_text, integrated_gradients, render_html, render_text, token_embedding,
)
from plmkit.outputs import EXPLAIN, claim_output
from plmkit.rundir import model_dir, run_of
from plmkit.files import atomic_write_text


def cli_configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="training run (its best/, else final/, model) or model directory")
    parser.add_argument("text", help="the text to explain")
    parser.add_argument("--pair", default=None, help="second text of a pair")
    parser.add_argument("--method", choices=("auto", "ig", "attention"), default="auto",
                        help="integrated gradients (classifiers) or attention maps; auto: ig for classifiers")
    parser.add_argument("--target", default=None, help="class name or id to explain (default: the predicted one)")
    parser.add_argument("--baseline", choices=("pad", "zero"), default="pad",
                        help="integrated gradients' starting point: [PAD] embeddings or zero vectors")
    parser.add_argument("--n-steps", type=int, default=50, help="integrated gradients: interpolation steps")
    parser.add_argument("--layer", type=int, default=-1, help="attention layer to plot (negative counts from the end)")
    add_output(parser, "folder for attribution.html / attention PNGs: new, empty, or one explain wrote",
               required=False, default="explain")


def cli_run(args: argparse.Namespace) -> int:
    from plmkit.data.tokenizer import Tokenizer
    from plmkit.models import load
    folder = model_dir(args.run_dir)
    model, tokenizer = load(folder), Tokenizer.load(folder)
    with claim_output(args.output, EXPLAIN, inputs=[args.run_dir]) as claim:  # never over files of yours
        return _explain(model, tokenizer, args, claim.ensure())


def _explain(model, tokenizer, args: argparse.Namespace, out: Path) -> int:
    method = args.method
    if method == "auto":
        method = "ig" if model.task == "sequence-classification" else "attention"
    if method == "ig":
        target = int(args.target) if args.target is not None and args.target.isdigit() else args.target
        attribution = explain_text(model, tokenizer, args.text, args.pair, target=target,
                                   baseline=args.baseline, n_steps=args.n_steps)
        print(render_text(attribution))
        page = atomic_write_text(out / "attribution.html",
                                 f"<!doctype html><meta charset='utf-8'>{render_html(attribution)}\n")
        print(f"wrote {page}")
        return 0
    tokens, maps = text_attention(model, tokenizer, args.text, args.pair)  # (L, H, T, T)
    layers = maps.size(0)
    if not -layers <= args.layer < layers:
        raise ValueError(f"--layer {args.layer} out of range for a model with {layers} layers")
    layer = args.layer % layers
    name = run_of(model_dir(args.run_dir)).resolve().name
    path = plot_attention(maps[layer], tokens, out / f"attention-layer{layer}.png",
                          title=f"{name}: attention of layer {layer}")
    print(f"wrote {path}")
    return 0


__all__ = [
    "Attribution", "attention_maps", "attention_modules", "attention_probabilities", "cli_configure", "cli_run",
    "explain_text", "integrated_gradients", "plot_attention", "render_html", "render_text", "text_attention",
    "token_embedding",
]
