"""Task-adaptive pretraining (Gururangan et al., 2020): before fine-tuning, continue pretraining the
checkpoint on the task's own training texts, without their labels, and on any unlabelled in-domain
files the user adds. It is what makes a small, briefly pretrained model pay on a task whose words
its pretraining corpus rarely saw.

    plmkit finetune classification --model runs/electra/final --train train.tsv --dev dev.tsv \\
        -o runs/sst2 --adapt-steps 1000 --adapt-file reviews.txt

The objective is the checkpoint's own: replaced-token detection for an ELECTRA model (its generator
is read from the checkpoint's generator/ folder, or starts fresh), masked LM for every other encoder.
Texts come from the whole training file (`max_train_examples` applies, `train_fraction` does not:
fewer labels does not mean less unlabelled text); the dev and test files are never read. The
adapted model lands in OUT/adapt/final and fine-tuning starts from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from plmkit.config import ConfigError
from plmkit.data.shards import prepare
from plmkit.files import atomic_write_text
from plmkit.models import read_config
from plmkit.outputs import RUN, claim_output
from plmkit.recipes.pretrain import DataConfig, PretrainConfig, pretrain
from plmkit.train.loop import TrainConfig

if TYPE_CHECKING:
    from plmkit.recipes.tasks_base import FinetuneConfig

log = logging.getLogger(__name__)
ADAPT_DIR = "adapt"


@dataclass
class AdaptConfig:
    """Task-adaptive pretraining before fine-tuning (`adapt.steps` > 0 turns it on)."""

    steps: int = 0
    """Pretraining steps on the task's texts before fine-tuning; 0 = no adaptation."""
    files: list[str] = field(default_factory=list)
    """More unlabelled in-domain text (any format `plmkit prepare` reads), mixed with the task's texts."""
    lr: float = 5e-4
    """Peak learning rate of the adaptation (warmup over 6% of the steps, then linear decay to 0)."""
    batch_size: int = 32
    """Examples per step."""
    max_length: int = 128
    """Tokens per example (texts are packed into examples up to this length)."""
    mlm_probability: float = 0.15
    """Fraction of tokens masked (for ELECTRA: that the generator replaces)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """bf16 autocast, fp32, or auto (bf16 where the hardware runs it natively)."""

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"adapt.steps must be >= 0, got {self.steps}")
        if self.files and self.steps == 0:
            raise ConfigError("adapt.files given but adapt.steps is 0: set --adapt-steps to adapt on them")


def adapted_model(cfg: FinetuneConfig, texts: Iterable[str]) -> FinetuneConfig:
    """`cfg` with cfg.model replaced by the checkpoint adapted on `texts` (+ cfg.adapt.files);
    `cfg` itself when cfg.adapt.steps is 0."""
    adapt = cfg.adapt
    if adapt.steps == 0:
        return cfg
    source = Path(cfg.model)
    if not source.is_dir() or cfg.from_scratch:
        raise ConfigError("task-adaptive pretraining continues a pretrained checkpoint: --model must be a "
                          "checkpoint directory (not a preset, and not from_scratch)")
    model_config, _ = read_config(source)
    if model_config.arch != "encoder":
        raise ConfigError(f"task-adaptive pretraining is for encoders; {source} is a {model_config.arch}")
    with claim_output(cfg.out, RUN, inputs=[cfg.train_file, *adapt.files]) as claim:  # the run's folder, checked
        claim.ensure()  # and marked before anything is written into it
    out = Path(cfg.out) / ADAPT_DIR
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "texts.txt"
    count, digest = _write_documents(corpus, texts)
    record = {"model": str(source.resolve()), "texts_sha256": digest, "adapt": dataclasses.asdict(adapt),
              "seed": cfg.train.seed}
    final = out / "run" / "final"
    if (final / "config.json").is_file() and _read_json(out / "adapt.json") == record:
        log.info("task-adaptive pretraining: reusing %s (same checkpoint, texts and settings)", final)
        return dataclasses.replace(cfg, model=str(final))
    log.info("task-adaptive pretraining: %d training texts%s, %d steps", count,
             f" + {len(adapt.files)} files" if adapt.files else "", adapt.steps)
    shards = prepare([corpus, *adapt.files], cfg.tokenizer or source, out / "shards", holdout=0.0, progress=False)
    objective = "electra" if model_config.family == "electra" else "roberta"
    train = TrainConfig(lr=adapt.lr, warmup_steps=max(1, adapt.steps * 6 // 100), max_steps=adapt.steps,
                        min_lr_ratio=0.0, batch_size=adapt.batch_size, weight_decay=0.01, betas=(0.9, 0.98),
                        eps=1e-6, precision=adapt.precision, save_every=0, seed=cfg.train.seed,
                        progress=cfg.train.progress, device=cfg.train.device)
    data = DataConfig(path=str(shards), objective=objective, max_length=adapt.max_length, eval_examples=0,
                      options={"mlm_probability": adapt.mlm_probability})
    pretrain_cfg = PretrainConfig(model=model_config, train=train, data=data, init_from=str(source))
    result = pretrain(pretrain_cfg, out / "run", resume="auto")
    atomic_write_text(out / "adapt.json", json.dumps(record, indent=2) + "\n")
    return dataclasses.replace(cfg, model=str(result.final_dir))


def _write_documents(path: Path, texts: Iterable[str]) -> tuple[int, str]:
    """One text per document (blank lines between), line breaks inside a text kept as sentences;
    returns the number of documents and the SHA-256 of what was written."""
    count, digest = 0, hashlib.sha256()
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                document = "\n".join(lines) + "\n\n"
                f.write(document)
                digest.update(document.encode("utf-8"))
                count += 1
    if count == 0:
        raise ConfigError("task-adaptive pretraining found no text in the training data")
    return count, digest.hexdigest()


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
