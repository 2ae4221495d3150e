"""Parity with `transformers` on tiny randomly initialized models, both directions, padded batches."""

from __future__ import annotations

import pytest
import torch

import plmkit
from plmkit.models import build_model
from plmkit.models.hf_compat import architecture

transformers = pytest.importorskip("transformers")

V, C, L, H, F = 99, 32, 2, 4, 37
TOL = 1e-5


def hf_config(family: str, **extra):
    common = dict(vocab_size=V, num_hidden_layers=L, num_attention_heads=H, intermediate_size=F, **extra)
    if family == "bert":
        return transformers.BertConfig(hidden_size=C, **common)
    if family == "roberta":
        return transformers.RobertaConfig(hidden_size=C, max_position_embeddings=66, **common)
    if family == "albert":
        return transformers.AlbertConfig(hidden_size=C, embedding_size=16, **common)
    if family == "electra":
        return transformers.ElectraConfig(hidden_size=C, embedding_size=16, **common)
    return transformers.GPT2Config(vocab_size=V, n_embd=C, n_layer=L, n_head=H, n_positions=64,
                                   bos_token_id=V - 1, eos_token_id=V - 1, pad_token_id=V - 1, **extra)


def batch(family: str):
    """Two rows, the second right-padded, with a sentence-pair segment in the first."""
    torch.manual_seed(1)
    low = 3 if family != "gpt2" else 0
    ids = torch.randint(low, V - 1, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    pad = 1 if family == "roberta" else (V - 1 if family == "gpt2" else 0)
    ids[1, 7:] = pad
    types = torch.zeros_like(ids)
    types[0, 6:] = 1
    kwargs = dict(input_ids=ids, attention_mask=mask)
    if family != "gpt2":
        kwargs["token_type_ids"] = types if family != "roberta" else torch.zeros_like(ids)
    return kwargs, mask.bool()


CASES = [
    ("bert", "pretraining"), ("bert", "masked-lm"), ("bert", "sequence-classification"),
    ("bert", "token-classification"), ("bert", "question-answering"), ("bert", "feature-extraction"),
    ("roberta", "masked-lm"), ("roberta", "sequence-classification"), ("roberta", "token-classification"),
    ("roberta", "question-answering"),
    ("albert", "pretraining"), ("albert", "masked-lm"), ("albert", "sequence-classification"),
    ("electra", "pretraining"), ("electra", "masked-lm"), ("electra", "sequence-classification"),
    ("electra", "token-classification"), ("electra", "question-answering"), ("electra", "feature-extraction"),
    ("gpt2", "causal-lm"), ("gpt2", "sequence-classification"), ("gpt2", "feature-extraction"),
]


def outputs(out, task: str, hf: bool) -> list[torch.Tensor]:
    """The comparable tensors of an output (HF or plmkit), each (B, T, ...) or (B, ...)."""
    if task == "pretraining" and not hasattr(out, "prediction_logits") and out.logits.dim() == 2:
        return [out.logits]  # ELECTRA's discriminator: one replaced-token logit per position (B, T)
    if task == "question-answering":
        return [out.start_logits, out.end_logits]
    if task == "feature-extraction":
        return [out.last_hidden_state if hf else out.hidden_states]
    if task == "pretraining":
        seq = out.seq_relationship_logits if hf and hasattr(out, "seq_relationship_logits") else (
            out.sop_logits if hf else out.seq_logits)
        return [out.prediction_logits if hf else out.logits, seq]
    return [out.logits]


def assert_close(ours: list[torch.Tensor], theirs: list[torch.Tensor], real: torch.Tensor) -> None:
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        if a.dim() >= 2 and a.shape[:2] == real.shape:  # per-token outputs: compare real tokens
            a, b = a[real], b[real]
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("family,task", CASES)
def test_hf_to_plmkit(tmp_path, family, task):
    cls = getattr(transformers, architecture(family, task))
    ref = cls(hf_config(family)).eval()
    ref.save_pretrained(tmp_path)
    ours = plmkit.load(tmp_path).eval()
    assert ours.task == ("masked-lm" if (family, task) == ("roberta", "pretraining") else task)
    kwargs, real = batch(family)
    with torch.no_grad():
        assert_close(outputs(ours(**kwargs), task, False), outputs(ref(**kwargs), task, True), real)


@pytest.mark.parametrize("family,task", CASES)
def test_plmkit_to_hf(tmp_path, family, task):
    cfg, _ = plmkit.models.hf_compat.config_from_hf({**hf_config(family).to_dict(),
                                                     "architectures": [architecture(family, task)]})
    ours = build_model(cfg, task).eval()
    for p in ours.parameters():  # random, not just initialized, values everywhere (biases, norms)
        torch.nn.init.normal_(p, std=0.05) if p.dim() == 1 else None
    ours.save_pretrained(tmp_path)
    cls = getattr(transformers, architecture(family, task))
    ref, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    kwargs, real = batch(family)
    with torch.no_grad():
        assert_close(outputs(ours(**kwargs), task, False), outputs(ref.eval()(**kwargs), task, True), real)


def test_hf_base_model_without_prefix_loads(tmp_path):
    ref = transformers.GPT2Model(hf_config("gpt2")).eval()
    ref.save_pretrained(tmp_path)
    ours = plmkit.load(tmp_path).eval()
    kwargs, real = batch("gpt2")
    with torch.no_grad():
        torch.testing.assert_close(ours(**kwargs).hidden_states[real], ref(**kwargs).last_hidden_state[real],
                                   atol=TOL, rtol=TOL)


def test_pretrained_encoder_loads_for_a_new_task(tmp_path):
    ref = transformers.BertForPreTraining(hf_config("bert")).eval()
    ref.save_pretrained(tmp_path)
    clf = plmkit.load(tmp_path, task="sequence-classification", num_labels=3).eval()
    assert clf.classifier.out_features == 3
    torch.testing.assert_close(clf.pooler.dense.weight, ref.bert.pooler.dense.weight)
    kwargs, real = batch("bert")
    with torch.no_grad():
        torch.testing.assert_close(clf(**kwargs).hidden_states[real], ref.bert(**kwargs).last_hidden_state[real],
                                   atol=TOL, rtol=TOL)


def test_electra_generator_exports_as_electra_for_masked_lm(tmp_path):
    """A saved ELECTRA pretraining model: the discriminator at the top, the generator in generator/,
    each loading into its transformers class with no missing or unexpected keys and the same logits."""
    cfg, _ = plmkit.models.hf_compat.config_from_hf({**hf_config("electra").to_dict(),
                                                     "architectures": ["ElectraForPreTraining"]})
    ours = build_model(cfg, "pretraining").eval()
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.05) if p.dim() == 1 else None
    ours.save_pretrained(tmp_path)
    generator, info = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "generator", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert generator.config.hidden_size == ours.generator.config.hidden_size < ours.config.hidden_size
    kwargs, real = batch("electra")
    with torch.no_grad():
        torch.testing.assert_close(ours.generator(**kwargs).logits[real], generator.eval()(**kwargs).logits[real],
                                   atol=TOL, rtol=TOL)
    reloaded = plmkit.load(tmp_path)
    assert reloaded.generator.transformer.emb.tok is reloaded.transformer.emb.tok  # shared again after loading
    for name, tensor in ours.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, atol=0, rtol=0)


def test_hf_electra_pair_loads_for_continued_pretraining(tmp_path):
    """A transformers discriminator with its generator in generator/ (as the ELECTRA releases pair them)
    loads as one plmkit ELECTRA pretraining model; the shared embeddings are the discriminator's."""
    disc = transformers.ElectraForPreTraining(hf_config("electra")).eval()
    gen_config = hf_config("electra", ).to_dict() | {"hidden_size": 16, "num_attention_heads": 1, "intermediate_size": 18}
    gen = transformers.ElectraForMaskedLM(transformers.ElectraConfig(**gen_config)).eval()
    gen.electra.embeddings.load_state_dict(disc.electra.embeddings.state_dict())
    disc.save_pretrained(tmp_path)
    gen.save_pretrained(tmp_path / "generator")
    ours = plmkit.load(tmp_path).eval()
    assert ours.config.generator_size == 0.5
    kwargs, real = batch("electra")
    with torch.no_grad():
        assert_close([ours(**kwargs).logits], [disc(**kwargs).logits], real)
        assert_close([ours.generator(**kwargs).logits], [gen(**kwargs).logits], real)
