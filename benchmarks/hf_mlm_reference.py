"""The `transformers` + `Trainer` reference for pretrain_quality.py: the same model shape pretrained
with masked LM on the same tokens (plmkit's shards: train split for training, held-out split for the
loss) for the same time budget, with what a `transformers` user writes: BertForMaskedLM,
DataCollatorForLanguageModeling (15%, 80/10/10), Trainer with bf16 autocast, AdamW, linear schedule
with 6% warmup, the preset's LR and batch. The step count is calibrated like plmkit's (a probe run).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plmkit.config import model_config
from plmkit.data.shards import ShardSet
from plmkit.recipes.pretrain import load_config


def chunks(shards: Path, split: str, length: int) -> list[dict[str, list[int]]]:
    """[CLS] + `length - 2` tokens of the split's token stream + [SEP], back to back (no padding)."""
    s = ShardSet.open(shards, split)
    tokens = np.asarray(s.tokens, dtype=np.int64)
    body = length - 2
    return [{"input_ids": [s.specials.cls, *tokens[i:i + body].tolist(), s.specials.sep]}
            for i in range(0, len(tokens) - body + 1, body)]


def hf_mlm_reference(shards: Path, preset: str, minutes: float, out: Path) -> dict[str, Any]:
    import transformers
    from transformers import (BertConfig, BertForMaskedLM, BertTokenizerFast, DataCollatorForLanguageModeling,
                              Trainer, TrainingArguments)

    cfg = load_config(preset, [f"data.path={shards}"])
    shape = model_config(preset)
    tokenizer = BertTokenizerFast.from_pretrained(str(ShardSet.open(shards).tokenizer_path))
    train, held = chunks(shards, "train", cfg.data.max_length), chunks(shards, "eval", cfg.data.max_length)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)

    def run(steps: int, folder: Path, evaluate: bool) -> tuple[float, dict[str, float]]:
        torch.manual_seed(0)
        model = BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=shape.hidden_size,
                                           num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
                                           intermediate_size=shape.intermediate_size,
                                           hidden_dropout_prob=shape.dropout,
                                           attention_probs_dropout_prob=shape.attention_dropout))
        args = TrainingArguments(output_dir=str(folder), max_steps=steps, per_device_train_batch_size=cfg.train.batch_size,
                                 learning_rate=cfg.train.lr, warmup_steps=max(1, steps * 6 // 100),
                                 lr_scheduler_type="linear", weight_decay=cfg.train.weight_decay,
                                 adam_beta1=cfg.train.betas[0], adam_beta2=cfg.train.betas[1], adam_epsilon=cfg.train.eps,
                                 bf16=True, use_cpu=True, logging_steps=max(1, steps // 10), save_strategy="no",
                                 report_to=[], seed=0, dataloader_num_workers=0, per_device_eval_batch_size=64)
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=held, data_collator=collator)
        started = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - started
        return elapsed, (trainer.evaluate() if evaluate else {})

    short, _ = run(10, out / "probe-10", False)
    longer, _ = run(40, out / "probe-40", False)
    rate = 30 / max(longer - short, 1e-3)
    steps = max(50, int((minutes * 60 - short) * rate * 0.97))
    elapsed, metrics = run(steps, out / "run", True)
    return {"transformers": transformers.__version__, "steps": steps, "minutes": elapsed / 60,
            "heldout_mlm_loss": float(metrics["eval_loss"]), "train_chunks": len(train), "heldout_chunks": len(held)}
