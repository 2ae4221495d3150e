"""Learning curves: how much does pretraining help with few labels?

    plmkit curve --pretrained runs/bert --scratch runs/bert --train sst2/train.tsv \\
        --dev sst2/dev.tsv --fractions 0.01,0.1,1 -o runs/curve --set recipe.train.lr=5.0e-5

For each fraction of the training labels, fine-tunes the pretrained checkpoint and a model of
the same shape initialized at random (a checkpoint folder or training run whose shape is reused
without its weights, or a preset / YAML file), both with the pretrained model's tokenizer and the
same seed, for `epochs` passes over that fraction (at least `min_steps` steps). Writes
OUT/curve.json (every run's dev metrics) and OUT/curve.png. Runs already finished (their
run_summary.json exists) are read back instead of trained again.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plmkit.cli_args import add_option, add_output, add_set
from plmkit.config import ConfigError, apply_overrides, from_dict, load_yaml
from plmkit.files import atomic_write
from plmkit.recipes.finetune import RECIPES, recipe
from plmkit.recipes.model_loading import source_config
from plmkit.rundir import hub_hint, model_dir, write_json

log = logging.getLogger(__name__)
SHAPE = ("arch", "hidden_size", "num_layers", "num_decoder_layers", "num_heads", "intermediate_size", "max_positions")
KINDS = ("pretrained", "scratch")


@dataclass
class CurveConfig:
    """A learning-curve experiment (see the module docstring)."""

    pretrained: str
    """Checkpoint folder or training run of the pretrained model (its tokenizer serves both models)."""
    scratch: str
    """The from-scratch model's shape: a checkpoint folder or training run (its config, not its
    weights), or a preset / YAML file."""
    train_file: str
    """Training data of the task."""
    dev_file: str
    """Dev data: each run's metric is its best checkpoint's score here."""
    out: str
    """Output directory: one run folder per (model, fraction), curve.json, curve.png."""
    task: str = "classification"
    """Fine-tuning task (classification, ner, qa, summarization, translation, lm)."""
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    """Fractions of the training examples, each in (0, 1]."""
    epochs: float = 3.0
    """Passes over each run's training examples."""
    min_steps: int = 50
    """Fewest optimizer steps of a run (tiny fractions)."""
    recipe: dict[str, Any] = field(default_factory=dict)
    """More fields of the task's config for every run, e.g. {text_column: text, train: {lr: 5.0e-5}}."""
    scratch_recipe: dict[str, Any] = field(default_factory=dict)
    """Fields that differ for the from-scratch runs, e.g. {train: {lr: 1.0e-3}}."""

    def __post_init__(self) -> None:
        if not self.fractions or not all(0.0 < f <= 1.0 for f in self.fractions):
            raise ConfigError(f"fractions must be numbers in (0, 1], got {self.fractions}")
        if self.task not in RECIPES:
            raise ConfigError(f"unknown task {self.task!r}; choose from {', '.join(RECIPES)}")
        if not Path(self.pretrained).is_dir():
            raise FileNotFoundError(f"--pretrained {self.pretrained}: no such checkpoint folder or training run."
                                    f"{hub_hint(self.pretrained)}")
        self.pretrained = str(model_dir(self.pretrained))  # a training run: its best/, else final/


def shape_of(model: str) -> dict[str, Any]:
    """The shape fields of a checkpoint directory, preset or YAML file."""
    config = source_config(model)
    return {name: getattr(config, name) for name in SHAPE}


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it, nested mappings merged."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_fields(cfg: CurveConfig, kind: str, fraction: float) -> dict[str, Any]:
    """The task config of one run."""
    fields = _merged({"train": {"save_every": 0}}, cfg.recipe)
    if kind == "scratch":
        fields = _merged(fields, cfg.scratch_recipe)
    fields.update(model=cfg.pretrained if kind == "pretrained" else cfg.scratch, tokenizer=cfg.pretrained,
                  train_file=cfg.train_file, dev_file=cfg.dev_file, out=str(Path(cfg.out) / f"{kind}-{fraction:g}"),
                  train_fraction=fraction, epochs=cfg.epochs, min_steps=cfg.min_steps)
    fields["from_scratch"] = kind == "scratch" and Path(cfg.scratch).is_dir()
    return fields


def _one_run(cfg: CurveConfig, kind: str, fraction: float) -> dict[str, Any]:
    fields = run_fields(cfg, kind, fraction)
    summary_path = Path(fields["out"]) / "run_summary.json"
    if summary_path.is_file():
        log.info("%s: finished before, reading its results", fields["out"])
        return json.loads(summary_path.read_text(encoding="utf-8"))
    result = recipe(cfg.task).finetune(fields)
    summary = {"model": kind, "fraction": fraction, "train_features": result.train_features,
               "steps": result.train.step, "metric": result.metric,
               "value": result.dev_metrics.get(result.metric or ""), "dev_metrics": result.dev_metrics,
               "out": str(result.out_dir)}
    write_json(summary_path, summary)
    return summary


def learning_curve(cfg: CurveConfig | dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """Run the experiment; returns (and writes to out/curve.json) every run's results."""
    if not isinstance(cfg, CurveConfig):
        cfg = from_dict(CurveConfig, {**dict(cfg or {}), **fields})
    recipe(cfg.task).check_requirements()
    shapes = {"pretrained": shape_of(cfg.pretrained), "scratch": shape_of(cfg.scratch)}
    differing = [k for k in SHAPE if shapes["pretrained"][k] != shapes["scratch"][k]]
    if differing:
        log.warning("the from-scratch model differs from the pretrained one in %s", ", ".join(differing))
    runs = [_one_run(cfg, kind, fraction) for fraction in sorted(cfg.fractions) for kind in KINDS]
    results = {"task": cfg.task, "metric": runs[0]["metric"], "config": asdict(cfg), "shapes": shapes,
               "same_shape": not differing, "runs": runs}
    out = Path(cfg.out)
    write_json(out / "curve.json", results)
    plot_curve(results, out / "curve.png")
    return results


def plot_curve(results: dict[str, Any], path: Path) -> Path:
    """Dev metric against the fraction of training labels, one line per model (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for kind in KINDS:
        points = sorted((r["fraction"], r["value"]) for r in results["runs"] if r["model"] == kind)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=kind)
    fractions = [r["fraction"] for r in results["runs"]]
    if max(fractions) / min(fractions) >= 10:
        ax.set_xscale("log")
    name = Path(results["config"]["out"]).name
    ax.set(xlabel="fraction of training labels", ylabel=f"dev {results['metric']}",
           title=f"{name}: {results['task']}, pretrained vs from scratch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def cli_configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="classification", choices=list(RECIPES), help="the fine-tuning task")
    parser.add_argument("--pretrained", required=True, metavar="MODEL",
                        help="the pretrained model: a checkpoint folder or training run (its best/, else final/)")
    add_option(parser, "--scratch", deprecated=("--scratch-preset",), required=True, metavar="MODEL",
               help="the from-scratch model's shape: a checkpoint folder or training run (its config is used, "
                    "not its weights) or a preset name / YAML file")
    parser.add_argument("--train", required=True, dest="train_file", metavar="FILE", help="labelled training file")
    parser.add_argument("--dev", required=True, dest="dev_file", metavar="FILE", help="labelled dev file")
    parser.add_argument("--fractions", default="0.01,0.1,1", help="comma-separated fractions of the training labels")
    add_output(parser, "folder of the runs, curve.json and curve.png")
    parser.add_argument("--config", help="YAML file of CurveConfig fields (`plmkit config curve` lists them)")
    add_set(parser, "--set recipe.text_column=text --set scratch_recipe.train.lr=1.0e-3 --set epochs=5")


def cli_run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    except ValueError:
        raise ValueError(f"--fractions: expected numbers separated by commas, got {args.fractions!r}") from None
    data: dict[str, Any] = load_yaml(args.config) if args.config else {}
    data.update(task=args.task, pretrained=args.pretrained, scratch=args.scratch, train_file=args.train_file,
                dev_file=args.dev_file, out=args.output, fractions=fractions)
    results = learning_curve(apply_overrides(data, args.overrides))
    for run in results["runs"]:
        print(f"{run['model']:>10}  fraction {run['fraction']:<6g} {run['metric']} = {run['value']:.4f}")
    print(f"wrote {Path(args.output) / 'curve.json'} and {Path(args.output) / 'curve.png'}")
    return 0
