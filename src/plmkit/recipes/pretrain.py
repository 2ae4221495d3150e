"""`plmkit pretrain`: token shards -> a pretrained BERT / RoBERTa / ALBERT / GPT / seq2seq model.

    plmkit pretrain --config bert-mini --set data.path=shards/ -o runs/bert
    plmkit pretrain --config my.yaml --set train.max_steps=2000 --resume auto -o runs/bert

A config has three sections, each a dataclass: `model` (ModelConfig), `train` (TrainConfig)
and `data` (DataConfig below). The vocabulary size and special-token ids always come from the
shards' tokenizer, so a preset works with any tokenizer.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from plmkit.cli_args import add_option, add_output, add_set
from plmkit.config import ConfigError, ModelConfig, apply_overrides, from_dict, load_yaml, preset_names
from plmkit.data.cooccurrence import cooccurrence_embeddings, scaled
from plmkit.data.loader import eval_batches, open_eval, open_stream
from plmkit.data.shard_set import unigram_log_probs
from plmkit.data.shards import ShardSet
from plmkit.data.tokenizer import Tokenizer
from plmkit.errors import UserError
from plmkit.heads import FAMILY_OBJECTIVES
from plmkit.models import build_model, load, save_model
from plmkit.models.bert import MLMHead
from plmkit.outputs import RUN, claim_output
from plmkit.recipes.best_checkpoint import BestCheckpoint, read_best
from plmkit.rundir import BEST_DIR, BEST_RECORD, FINAL_DIR
from plmkit.train.distributed import current_env
from plmkit.train.checkpoint import resolve_resume
from plmkit.train.loop import TrainConfig, TrainResult, train
from plmkit.train.model_card import write_model_card

OBJECTIVE_OF_FAMILY = FAMILY_OBJECTIVES  # the objective of each model family (plmkit.heads)


@dataclass
class MixSource:
    """One more shard folder to pretrain on, beside data.path."""

    path: str
    """Shard folder written by `plmkit prepare` with the same tokenizer as data.path."""
    weight: float = 1.0
    """Passes over this folder per epoch (4 = four times, 0.5 = half of it)."""

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ConfigError(f"data.mix: weight of {self.path} must be positive, got {self.weight}")


@dataclass
class DataConfig:
    """Where the token shards are and how examples are cut from them."""

    path: str = ""
    """Shard folder written by `plmkit prepare`."""
    weight: float = 1.0
    """Passes over data.path per epoch when other folders are mixed in (see mix)."""
    mix: list[MixSource] = field(default_factory=list)
    """More shard folders (e.g. in-domain text beside a general corpus), each with its weight."""
    objective: str | None = None
    """bert (MLM+NSP), albert (MLM+SOP), roberta (dynamic MLM), electra (replaced-token detection), gpt (CLM),
    seq2seq (infilling); None = by model family."""
    max_length: int = 128
    """Tokens per example (special tokens included)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Objective options, e.g. {whole_word: true, mlm_probability: 0.15}."""
    eval_examples: int = 512
    """Held-out examples scored at each evaluation (0 = no evaluation)."""
    prefetch: int = 2
    """Batches prepared ahead in a background thread."""


@dataclass
class EmbeddingsConfig:
    """How a fresh model's token embeddings start (see plmkit.data.cooccurrence)."""

    init: Literal["random", "cooccurrence"] = "random"
    """random, or cooccurrence: PPMI + truncated SVD of the training shards' token co-occurrences,
    computed in seconds before the first step (tokens that never occur stay random). Only a fresh
    model's: with init_from (or a resumed run) the checkpoint's embeddings are kept."""
    window: int = 10
    """Co-occurrence: tokens at most this far apart inside a document count as a pair (weight 1/distance)."""
    max_tokens: int = 20_000_000
    """Co-occurrence: read at most this many tokens of each shard folder."""
    scale: float = 1.0
    """Co-occurrence: standard deviation of the vectors, in units of model.initializer_range."""
    output_bias: Literal["zero", "unigram"] = "unigram"
    """How a fresh masked-LM head's output bias starts: zero, or unigram: the log frequency of each
    token in the training shards (minus its mean), so the first prediction is the word frequencies
    and the held-out loss starts at the unigram plateau instead of at ln(vocabulary size)."""


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    init_from: str | None = None
    """Continue pretraining from this checkpoint directory instead of random weights."""
    keep_best: bool = True
    """Keep OUT/best, the model of the evaluation with the lowest held-out loss (needs train.eval_every and
    data.eval_examples > 0). A small corpus seen many times over is overfitted late in a long run; a
    run's best/ is what `plmkit finetune`, `plmkit curve` and init_from load (before its final/)."""
    patience: int | None = None
    """Stop after this many held-out evaluations in a row without a lower loss; None = run every step."""

    def __post_init__(self) -> None:
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be at least 1 (or null), got {self.patience}")


def load_config(name_or_path: str, overrides: list[str] | None = None) -> PretrainConfig:
    """A preset or YAML file, with dotted overrides (``train.lr=1e-3``)."""
    data = apply_overrides(load_yaml(name_or_path), list(overrides or []))
    return from_dict(PretrainConfig, data)


def _fit_model_to_tokenizer(cfg: ModelConfig, shards: ShardSet) -> ModelConfig:
    """The vocabulary and special ids of the shards' tokenizer replace the preset's."""
    s = shards.specials
    values = cfg.to_dict()
    values["vocab_size"] = shards.vocab_size
    values["pad_token_id"] = s.pad if s.pad is not None else (s.eos if s.eos is not None else 0)
    if cfg.arch != "encoder":
        values["bos_token_id"] = s.bos if s.bos is not None else s.cls
        values["eos_token_id"] = s.eos if s.eos is not None else s.sep
    if cfg.arch == "encoder-decoder":
        values["decoder_start_token_id"] = values["bos_token_id"]
    if cfg.family == "roberta":
        values["position_offset"] = values["pad_token_id"] + 1
    return from_dict(ModelConfig, values, "model")


def sources(data: DataConfig) -> list[tuple[str, float]]:
    """(shard folder, weight) of data.path and every data.mix entry."""
    return [(data.path, data.weight)] + [(m.path, m.weight) for m in data.mix]


def make_eval_fn(cfg: PretrainConfig, objective: str):
    """Held-out MLM / NSP accuracy, loss and perplexity over a fixed set of examples (ELECTRA: the
    generator's MLM loss as eval_loss, and the discriminator's replaced-token detection)."""
    if cfg.data.eval_examples <= 0:
        return None
    held_out = open_eval(sources(cfg.data), objective, max_length=cfg.data.max_length, seed=cfg.train.seed,
                         **cfg.data.options)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        totals = dict.fromkeys(("loss", "n", "correct", "seq_correct", "seq_n", "rtd_loss", "rtd_correct", "rtd_n",
                                "replaced", "caught"), 0.0)
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.train.seed)  # ELECTRA samples: the same draws at every evaluation,
            return _evaluate(model, device, totals)  # and the training RNG is left untouched

    def _evaluate(model: torch.nn.Module, device: torch.device, totals: dict[str, float]) -> dict[str, float]:
        for batch in eval_batches(held_out, cfg.train.batch_size, limit=cfg.data.eval_examples):
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            labels = batch.get("labels")
            masked = labels[labels != -100] if labels is not None else None
            n = float(out.n_targets) if out.rtd_loss is None else float(masked.numel())
            totals["loss"] += float(out.mlm_loss if out.mlm_loss is not None else out.loss) * n
            totals["n"] += n
            if out.mlm_loss is not None:  # MLM logits are (N_masked, V) at the labelled positions
                mlm_logits = out.generator_logits if out.rtd_loss is not None else out.logits
                totals["correct"] += float((mlm_logits.argmax(-1) == masked).sum())
            if out.seq_logits is not None and "next_sentence_label" in batch:
                totals["seq_correct"] += float((out.seq_logits.argmax(-1) == batch["next_sentence_label"]).sum())
                totals["seq_n"] += batch["next_sentence_label"].numel()
            if out.rtd_loss is not None:  # ELECTRA: how well the discriminator spots replaced tokens
                real = batch["attention_mask"].bool()
                guess = out.logits > 0
                totals["rtd_loss"] += float(out.rtd_loss) * float(real.sum())
                totals["rtd_correct"] += float((guess == out.replaced)[real].sum())
                totals["rtd_n"] += float(real.sum())
                totals["replaced"] += float(out.replaced[real].sum())
                totals["caught"] += float((guess & out.replaced)[real].sum())
        loss = totals["loss"] / max(totals["n"], 1.0)
        metrics = {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}
        if objective in ("bert", "albert", "roberta", "electra"):
            metrics["mlm_accuracy"] = totals["correct"] / max(totals["n"], 1.0)
        if totals["seq_n"]:
            metrics["nsp_accuracy" if objective == "bert" else "sop_accuracy"] = totals["seq_correct"] / totals["seq_n"]
        if totals["rtd_n"]:
            metrics["rtd_loss"] = totals["rtd_loss"] / totals["rtd_n"]
            metrics["rtd_accuracy"] = totals["rtd_correct"] / totals["rtd_n"]
            metrics["rtd_recall"] = totals["caught"] / max(totals["replaced"], 1.0)
        return metrics

    return evaluate


def pretrain(cfg: PretrainConfig, out_dir: str | Path, resume: str | None = None) -> TrainResult:
    """Pretrain cfg.model on the shards at cfg.data.path with the family's objective."""
    shards = _training_shards(cfg)
    resuming = resolve_resume(Path(out_dir), resume) is not None
    tokenizer = Tokenizer.load(shards.tokenizer_path)
    model_cfg = _fit_model_to_tokenizer(cfg.model, shards)
    objective = cfg.data.objective or OBJECTIVE_OF_FAMILY[model_cfg.family]
    if cfg.init_from:
        model = load(cfg.init_from, task="pretraining")  # its embeddings too: embeddings.init is for fresh models
        if model.config.vocab_size != shards.vocab_size:
            raise ConfigError(f"init_from {cfg.init_from}: vocabulary {model.config.vocab_size} != "
                              f"shards' {shards.vocab_size}; prepare the shards with that model's tokenizer")
    else:
        model = fresh_model(cfg, model_cfg, embeddings=not resuming)
    stream = open_stream(sources(cfg.data), objective, max_length=cfg.data.max_length, batch_size=cfg.train.batch_size,
                         seed=cfg.train.seed, prefetch=cfg.data.prefetch, **cfg.data.options)
    eval_fn = make_eval_fn(cfg, objective)
    keeper = None
    if eval_fn is not None and cfg.keep_best and cfg.train.eval_every:
        keeper = BestCheckpoint(model, tokenizer, Path(out_dir), "eval_loss", cfg.patience, resuming=resuming)
    result = train(model, stream, cfg.train, out_dir, eval_fn=eval_fn, resume=resume, tokenizer=tokenizer,
                   callbacks=[keeper] if keeper else [])
    best = Path(out_dir) / BEST_DIR
    if keeper is not None and current_env().is_main and (best / BEST_RECORD).is_file():
        write_model_card(best)
    return result


def _training_shards(cfg: PretrainConfig) -> ShardSet:
    if not cfg.data.path:
        raise ConfigError("data.path is required: the shard folder from `plmkit prepare` (--set data.path=...)")
    return ShardSet.open(cfg.data.path, "train")


def fresh_model(cfg: PretrainConfig, model_cfg: ModelConfig, embeddings: bool = True) -> torch.nn.Module:
    """The model pretraining starts from: random weights (seeded by train.seed) and, with
    embeddings.init=cooccurrence and `embeddings`, the co-occurrence token embeddings."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(model_cfg, "pretraining")
    if embeddings and cfg.embeddings.init == "cooccurrence":
        init_cooccurrence_embeddings(model, cfg)
    if embeddings and cfg.embeddings.output_bias == "unigram":
        init_unigram_output_bias(model, cfg)
    return model


def save_initial_model(cfg: PretrainConfig, out_dir: str | Path) -> Path:
    """Save the model `pretrain(cfg, ...)` would start from, with the shards' tokenizer, as a model
    folder: the co-occurrence stage alone (seconds), to fine-tune or to pretrain further with
    init_from, which keeps these embeddings."""
    shards = _training_shards(cfg)
    model = fresh_model(cfg, _fit_model_to_tokenizer(cfg.model, shards))
    return save_model(model, out_dir, Tokenizer.load(shards.tokenizer_path))


def save_start(cfg: PretrainConfig, out_dir: str | Path) -> Path:
    """`plmkit pretrain --start-only`: `save_initial_model` into a new run folder's final/, where
    `finetune --model OUT` finds it. A folder that already holds a run is refused (its models
    are not replaced by an untrained one)."""
    with claim_output(out_dir, RUN, inputs=[path for path, _ in sources(cfg.data)]) as claim:
        if claim.state == "ours":
            raise UserError(f"{claim.path}: already holds a training run; --start-only writes a new one "
                            "(name a new or empty folder)")
        return save_initial_model(cfg, claim.ensure() / FINAL_DIR)


def init_cooccurrence_embeddings(model: torch.nn.Module, cfg: PretrainConfig) -> None:
    """Set the token embeddings of the tokens that occur in the training shards to their
    co-occurrence vectors (plmkit.data.cooccurrence), scaled to the model's initialization."""
    table = model.transformer.emb.tok.weight  # (V, E)
    vectors, seen = cooccurrence_embeddings(sources(cfg.data), table.size(1), window=cfg.embeddings.window,
                                            max_tokens=cfg.embeddings.max_tokens, seed=cfg.train.seed)
    vectors = scaled(vectors, seen, cfg.embeddings.scale * model.config.initializer_range)
    with torch.no_grad():
        rows = torch.from_numpy(seen)
        table[rows] = torch.from_numpy(vectors[seen]).to(table.dtype)


def init_unigram_output_bias(model: torch.nn.Module, cfg: PretrainConfig) -> None:
    """Set the output bias of every masked-LM head in `model` (BERT's, ELECTRA's generator's) to the
    log unigram probabilities of the training shards (each folder's weighted by its data weight),
    minus their mean. A model without such a head (GPT) is left as it is."""
    biases = [m.bias for m in model.modules() if isinstance(m, MLMHead)]
    if not biases:
        return
    probs = sum(weight * np.exp(unigram_log_probs(ShardSet.open(path, "train"))) for path, weight in sources(cfg.data))
    log_probs = np.log(probs / probs.sum())
    with torch.no_grad():
        for bias in biases:
            bias.copy_(torch.from_numpy(log_probs - log_probs.mean()))


def cli_configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="bert-mini", metavar="PRESET|YAML",
                        help=f"preset ({', '.join(preset_names())}) or YAML file; `plmkit config pretrain "
                             "--config NAME` lists its values")
    add_option(parser, "--shards", deprecated=("--data",), metavar="DIR",
               help="token shard folder from `plmkit prepare` (same as --set data.path=DIR)")
    parser.add_argument("--mix", action="append", default=[], metavar="DIR=WEIGHT",
                        help="another shard folder to pretrain on, with its passes per epoch, e.g. "
                             "--mix domain-shards/=4 (repeatable; same tokenizer as --shards)")
    add_set(parser, "--set train.lr=1e-3 --set model.num_layers=6")
    parser.add_argument("--init-from", metavar="MODEL",
                        help="continue pretraining from this checkpoint folder or training run")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="continue a run: auto (its newest complete checkpoint in -o) or a checkpoint folder")
    parser.add_argument("--start-only", action="store_true",
                        help="write only the model pretraining starts from (the co-occurrence embeddings and the "
                             "unigram output bias, seconds) to OUTPUT/final and stop: to fine-tune as it is")
    add_output(parser, "run folder to write (new, empty, or a run to resume)")


def _mix_source(item: str) -> MixSource:
    """--mix DIR=WEIGHT (or DIR, weight 1)."""
    path, _, weight = item.rpartition("=") if "=" in item else (item, "", "1")
    try:
        return MixSource(path=path, weight=float(weight))
    except ValueError:
        raise ConfigError(f"--mix {item}: expected DIR=WEIGHT with a number, e.g. domain-shards/=4") from None


def cli_run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.shards:
        overrides.append(f"data.path={args.shards}")
    if args.init_from:
        overrides.append(f"init_from={args.init_from}")
    cfg = load_config(args.config, overrides)
    cfg.data.mix += [_mix_source(item) for item in args.mix]
    if args.start_only:
        if cfg.init_from or args.resume:
            raise ConfigError("--start-only writes a fresh model's start; it does not go with --init-from or --resume")
        folder = save_start(cfg, args.output)
        print(f"wrote the model pretraining starts from -> {folder} "
              f"(embeddings: {cfg.embeddings.init}, output bias: {cfg.embeddings.output_bias})")
        return 0
    result = pretrain(cfg, args.output, resume=args.resume)
    last = result.eval_history[-1] if result.eval_history else {}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "step")
    print(f"pretrained {result.step} steps in {result.elapsed_s / 60:.1f} min -> {result.final_dir}"
          + (f" ({summary})" if summary else ""))
    best = best_line(Path(args.output))
    if best:
        print(best)
    return 0


def best_line(run_dir: Path) -> str | None:
    """"lowest held-out loss L at step N -> RUN/best (what finetune loads from this run)", or None
    when the run kept no best/."""
    best = read_best(run_dir / BEST_DIR)
    if best is None:
        return None
    return (f"lowest held-out loss {best['value']:.4g} at step {best['step']} -> {run_dir / BEST_DIR} "
            "(what finetune loads from this run)")
