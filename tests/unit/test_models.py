"""Cheap smoke tests of every preset and head, plus the attention paths the rest builds on."""

from __future__ import annotations

import json

import pytest
import torch

import plmkit
from plmkit.config import ConfigError, ModelConfig, from_dict, load_yaml, model_config, preset_names
from plmkit.models import MODELS, KVCache, build_model


@pytest.fixture
def tiny_cfg(tiny_config):
    """A preset in the shared tiny shape with a 100-token vocabulary."""
    return lambda preset, **changes: tiny_config(preset, vocab_size=100, **changes)


def labels_for(task: str, arch: str, ids: torch.Tensor) -> dict:
    b, t = ids.shape
    if task in ("pretraining", "masked-lm") and arch == "encoder":
        labels = torch.full_like(ids, -100)
        labels[:, 1] = ids[:, 1]
        return dict(labels=labels, next_sentence_label=torch.tensor([0, 1]))
    if task == "sequence-classification":
        return dict(labels=torch.tensor([0, 1]))
    if task == "token-classification":
        return dict(labels=torch.randint(0, 2, (b, t)))
    if task == "question-answering":
        return dict(start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 4]))
    if task == "feature-extraction":
        return {}
    return dict(labels=ids)


def test_every_preset_loads_and_validates():
    names = preset_names()
    assert {"bert-tiny", "bert-mini", "bert-small", "bert-base", "roberta-base", "albert-base", "gpt-tiny",
            "gpt2-small", "seq2seq-small"} <= set(names)
    from plmkit.recipes.pretrain import load_config

    for name in names:
        cfg = load_config(name)  # model, train and data sections, all validated
        assert cfg.model == from_dict(ModelConfig, load_yaml(name)["model"], "model")
        assert cfg.train.max_steps > 0 and cfg.data.max_length <= cfg.model.max_positions


def test_gpt2_small_preset_has_124m_parameters():
    with torch.device("meta"):
        model = build_model(model_config("gpt2-small"), "causal-lm")
    assert 124_000_000 < model.num_parameters() < 125_000_000


@pytest.mark.parametrize("preset", ["bert-tiny", "roberta-base", "albert-base", "gpt-tiny", "seq2seq-small"])
def test_forward_backward_every_head(preset, tiny_cfg):
    cfg = tiny_cfg(preset)
    for (arch, task) in MODELS:
        if arch != cfg.arch:
            continue
        model = build_model(cfg, task)
        ids = torch.randint(5, 100, (2, 9))
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0
        out = model(ids, attention_mask=mask, **labels_for(task, arch, ids))
        if task == "feature-extraction":
            assert out.hidden_states.shape == (2, 9, 32)
            continue
        assert torch.isfinite(out.loss) and out.n_targets > 0
        out.loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), (preset, task)


def test_unknown_key_and_wrong_type_are_errors_that_list_valid_keys():
    with pytest.raises(ConfigError, match="valid keys of ModelConfig: .*hidden_size"):
        from_dict(ModelConfig, {"hiden_size": 3})
    with pytest.raises(ConfigError, match="model.num_layers: expected an integer"):
        model_config("bert-tiny", ["num_layers=two"])
    with pytest.raises(ConfigError, match="divisible"):
        model_config("bert-tiny", ["num_heads=3"])
    with pytest.raises(ConfigError, match="unknown preset 'bert-huge'; presets: albert-base"):
        model_config("bert-huge")


def test_mlm_head_projects_only_masked_positions(tiny_cfg):
    model = build_model(tiny_cfg("bert-tiny"), "pretraining").eval()
    ids = torch.randint(5, 100, (2, 9))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 5] = 7, 8
    out = model(ids, labels=labels)
    assert out.logits.shape == (2, 100)
    full = model(ids).logits
    torch.testing.assert_close(out.logits, torch.stack([full[0, 3], full[1, 5]]))


def test_padding_does_not_change_real_token_outputs(tiny_cfg):
    model = build_model(tiny_cfg("bert-tiny"), "masked-lm").eval()
    ids = torch.randint(5, 100, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, :6], model(ids).logits)


@pytest.mark.parametrize("preset", ["bert-tiny", "gpt-tiny"])
def test_packed_rows_equal_separate_rows(preset, tiny_cfg):
    """Two sequences in one row (block-diagonal mask, per-sequence positions) == two rows."""
    model = build_model(tiny_cfg(preset), "feature-extraction").eval()
    a, b = torch.randint(5, 100, (1, 5)), torch.randint(5, 100, (1, 4))
    packed = torch.cat([a, b], dim=1)
    segments = torch.tensor([[0] * 5 + [1] * 4])
    positions = torch.tensor([list(range(5)) + list(range(4))])
    h = model(packed, segment_ids=segments, position_ids=positions).hidden_states
    torch.testing.assert_close(h[:, :5], model(a).hidden_states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h[:, 5:], model(b).hidden_states, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_kv_cache_decoding_equals_full_forward(position, tiny_cfg):
    model = build_model(tiny_cfg("gpt-tiny", position=position), "causal-lm").eval()
    ids = torch.randint(5, 100, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in row 1
    full = model(ids, attention_mask=mask).logits
    cache = KVCache.for_model(model.config, batch_size=2, max_length=16)
    steps = [model(ids[:, :6], attention_mask=mask[:, :6], cache=cache).logits]
    for t in range(6, 10):
        steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1)[mask.bool()], full[mask.bool()], atol=1e-5, rtol=1e-5)


def test_seq2seq_cached_decoder_equals_full_decoder(tiny_cfg):
    model = build_model(tiny_cfg("seq2seq-small"), "seq2seq-lm").eval()
    src, tgt = torch.randint(5, 100, (2, 7)), torch.randint(5, 100, (2, 5))
    memory = model.encode(src)
    full = model.decode(tgt, memory)
    cache = KVCache.for_model(model.config, batch_size=2, max_length=8)
    steps = [model.decode(tgt[:, t:t + 1], memory, cache=cache) for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_forward_backward(tiny_cfg):
    model = build_model(tiny_cfg("bert-tiny"), "pretraining")
    ids = torch.randint(5, 100, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, **labels_for("pretraining", "encoder", ids))
    out.loss.backward()
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("preset,task", [("seq2seq-small", "seq2seq-lm"), ("bert-tiny", "token-classification"),
                                         ("gpt-tiny", "causal-lm")])
def test_save_load_round_trip(tmp_path, preset, task, tiny_cfg):
    cfg = tiny_cfg(preset)
    if task == "token-classification":
        cfg = from_dict(ModelConfig, {**cfg.to_dict(), "id2label": {0: "O", 1: "B-PER", 2: "I-PER"}})
    model = build_model(cfg, task).eval()
    model.save_pretrained(tmp_path)
    loaded = plmkit.load(tmp_path).eval()
    assert loaded.config == model.config and loaded.task == task
    ids = torch.randint(5, 100, (2, 6))
    kwargs = dict(labels=ids) if task == "seq2seq-lm" else {}
    torch.testing.assert_close(loaded(ids, **kwargs).logits, model(ids, **kwargs).logits)


def test_bad_checkpoints_give_clear_errors(tmp_path, tiny_cfg):
    model = build_model(tiny_cfg("bert-tiny"), "masked-lm")
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        plmkit.load(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match="never unpickles"):
        plmkit.load(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        plmkit.load(tmp_path)


def test_mismatched_weights_name_the_tensor(tmp_path, tiny_cfg):
    build_model(tiny_cfg("bert-tiny"), "masked-lm").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["plmkit"]["config"]["intermediate_size"] = 48
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="intermediate.dense.weight|mlp.fc.weight"):
        plmkit.load(tmp_path)


def test_warm_start_seq2seq_from_encoder(tiny_cfg):
    from plmkit.models.encoder_decoder import Seq2SeqLM

    encoder = build_model(tiny_cfg("bert-tiny"), "masked-lm").eval()
    model = Seq2SeqLM.from_encoder(encoder).eval()
    ids = torch.randint(5, 100, (2, 6))
    torch.testing.assert_close(model.encode(ids), encoder(ids).hidden_states)
    assert model.decoder.emb.tok.weight is model.encoder.emb.tok.weight


@pytest.mark.parametrize("extra", [{"norm": "pre"}, {"position": "rotary"}])
def test_configs_without_hf_equivalent_round_trip_natively(tmp_path, extra, tiny_cfg):
    model = build_model(tiny_cfg("bert-tiny", **extra), "masked-lm").eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "plmkit-bert"  # transformers refuses it rather than computing another model
    ids = torch.randint(5, 100, (2, 6))
    torch.testing.assert_close(plmkit.load(tmp_path).eval()(ids).logits, model(ids).logits)


def test_eval_mode_restores_the_previous_mode(tiny_cfg):
    from plmkit.models import eval_mode

    model = build_model(tiny_cfg("bert-tiny"), "masked-lm").train()
    with eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert all(m.training for m in model.modules())
    with pytest.raises(RuntimeError), eval_mode(model.eval()):
        raise RuntimeError("restored even on errors")
    assert not model.training
