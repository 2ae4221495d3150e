"""ELECTRA pretraining: the objective's masking, the sampled replacements and their targets, where
the gradients go, the loss over real tokens, and a short run through the pretraining recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plmkit.config import ModelConfig
from plmkit.data.pretraining import build_objective
from plmkit.data.shards import ShardSet, prepare
from plmkit.models import build_model, electra
from plmkit.models.electra import ElectraForPretraining, generator_config, sample_tokens

V = 120


def tiny_config(**changes) -> ModelConfig:
    return ModelConfig(family="electra", vocab_size=V, hidden_size=64, embedding_size=32, num_layers=2, num_heads=2,
                       intermediate_size=128, max_positions=64, dropout=0.0, attention_dropout=0.0, **changes)


def masked_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two rows of 12 tokens, the second padded after 8; positions 2..6 masked (id 4) in both."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    ids[1, 8:] = 0
    labels = torch.full_like(ids, -100)
    labels[:, 2:7] = ids[:, 2:7]
    inputs = ids.clone()
    inputs[:, 2:7] = 4
    return {"input_ids": inputs, "attention_mask": mask, "labels": labels}


def test_generator_is_a_narrower_model_sharing_the_embeddings() -> None:
    model = build_model(tiny_config(), "pretraining")
    assert isinstance(model, ElectraForPretraining)
    gen = model.generator
    assert gen.config.hidden_size == 16 and gen.config.num_layers == 2 and gen.config.intermediate_size == 32
    assert gen.transformer.emb.tok is model.transformer.emb.tok and gen.transformer.emb.norm is model.transformer.emb.norm
    assert gen.mlm.decoder.weight is model.transformer.emb.tok.weight
    assert gen.transformer.emb.proj is not model.transformer.emb.proj  # each projects to its own width
    assert generator_config(ModelConfig(family="electra", hidden_size=768, num_heads=12, intermediate_size=3072,
                                        generator_size=1 / 3)).num_heads == 4


def test_replaced_positions_are_exactly_where_the_sample_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model(tiny_config(), "pretraining")
    batch = masked_batch()
    picked = batch["labels"] != -100
    originals = batch["labels"][picked]
    sample = originals.clone()
    sample[::2] = (sample[::2] + 1) % V  # every other masked position gets another token, the rest the original
    monkeypatch.setattr(electra, "sample_tokens", lambda logits: sample)
    out = model(**batch)
    expected = torch.zeros_like(picked)
    expected[picked] = sample != originals
    assert torch.equal(out.replaced, expected)
    assert not out.replaced[~picked].any()


def test_sampling_follows_the_generator_distribution() -> None:
    torch.manual_seed(0)
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    draws = sample_tokens(probs.log().expand(20000, 4).clone())
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_rtd_loss_reaches_no_generator_weight_and_mlm_loss_no_discriminator_weight() -> None:
    model = build_model(tiny_config(), "pretraining")
    out = model(**masked_batch())
    shared = {id(p) for p in model.transformer.emb.parameters()}
    generator_only = [p for p in model.generator.parameters() if id(p) not in shared]
    discriminator_only = [p for n, p in model.named_parameters()
                          if not n.startswith("generator.") and id(p) not in shared]
    out.rtd_loss.backward(retain_graph=True)
    assert all(p.grad is None for p in generator_only)  # nothing flows back through the sampled tokens
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in discriminator_only)
    model.zero_grad(set_to_none=True)
    out.mlm_loss.backward()
    assert all(p.grad is None for p in discriminator_only)
    assert all(p.grad is not None for p in generator_only)


def test_rtd_loss_is_over_every_real_token_and_combines_with_the_weight() -> None:
    model = build_model(tiny_config(rtd_weight=7.0), "pretraining")
    batch = masked_batch()
    torch.manual_seed(3)
    out = model(**batch)
    real = batch["attention_mask"].bool()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits[real], out.replaced[real].float())
    torch.testing.assert_close(out.rtd_loss, expected)
    torch.testing.assert_close(out.loss, out.mlm_loss + 7.0 * out.rtd_loss)
    assert out.n_targets == real.sum() == 20
    assert out.logits.shape == (2, 12) and out.generator_logits.shape == (10, V)


def test_without_labels_the_discriminator_scores_the_given_tokens() -> None:
    model = build_model(tiny_config(), "pretraining").eval()
    batch = masked_batch()
    out = model(batch["input_ids"], batch["attention_mask"])
    assert out.loss is None and out.logits.shape == (2, 12)


@pytest.fixture(scope="module")
def wiki(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wiki")
    lines = (shared_data / "wikitext-2" / "valid.txt").read_text(encoding="utf-8").split("\n")[:1500]
    corpus = folder / "wiki.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return prepare(corpus, shared_data / "vocab" / "bert-base-uncased-vocab.txt", folder / "shards",
                   split_sentences=True, holdout=0.05, progress=False)


def test_electra_objective_masks_with_the_mask_token_or_keeps_the_original(wiki: Path) -> None:
    shards = ShardSet.open(wiki)
    batch = build_objective("electra", shards, max_length=128).batch(range(300))
    selected = batch["labels"] != -100
    chosen = batch["input_ids"][selected]
    masked = (chosen == shards.specials.mask).float().mean()
    kept = (chosen == batch["labels"][selected]).float().mean()
    assert abs(masked - 0.85) < 0.02 and abs(masked + kept - 1.0) < 1e-6  # no random tokens
    originals = torch.where(selected, batch["labels"], batch["input_ids"])
    specials = torch.tensor(shards.specials.present())
    candidates = (batch["attention_mask"] == 1) & ~torch.isin(originals, specials)
    assert abs(selected.sum() / candidates.sum() - 0.15) < 0.005


def test_electra_pretraining_run_learns_to_detect_replacements(wiki: Path, tmp_path: Path) -> None:
    from plmkit.recipes.pretrain import load_config, pretrain

    cfg = load_config("electra-mini", [f"data.path={wiki}", "model.num_layers=2", "model.hidden_size=64",
                                       "model.num_heads=2", "model.intermediate_size=128", "model.embedding_size=32",
                                       "train.max_steps=60", "train.warmup_steps=6", "train.batch_size=8",
                                       "train.eval_every=30", "train.save_every=0", "train.progress=false",
                                       "data.max_length=64", "data.eval_examples=32", "train.precision=fp32"])
    result = pretrain(cfg, tmp_path / "run")
    first, last = result.eval_history[0], result.eval_history[-1]
    assert {"rtd_loss", "rtd_accuracy", "rtd_recall", "mlm_accuracy", "eval_loss"} <= set(last)
    assert last["rtd_loss"] < first["rtd_loss"] or last["eval_loss"] < first["eval_loss"]
    assert last["rtd_accuracy"] > 0.8  # most tokens are originals: a trivial floor the model must reach
    assert (result.final_dir / "generator" / "model.safetensors").is_file()
    again = pretrain(cfg, tmp_path / "run2")  # evaluation draws from its own seeded generator: repeatable
    assert again.eval_history == result.eval_history
