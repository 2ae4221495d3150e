"""Integrity is checked when data is read: model configs and weights, shard files and their
tokenizer, a run's tokenizer against its model's, damaged checkpoints, long lines in pieces."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from plmkit.config import ConfigError, ModelConfig, model_config
from plmkit.data import shards as shards_module
from plmkit.data import tokenizer as tokenizer_module
from plmkit.data.shards import ShardSet, prepare
from plmkit.data.tokenizer import Tokenizer, bounded_pieces
from plmkit.errors import DataError, IntegrityError, UserError
from plmkit.models import build_model, load, save_model
from plmkit.train import checkpoint as ckpt
from plmkit.train.loop import TrainConfig, train

WORDS = ("the a of film story king queen night day good bad funny dull actor scene light dark river stone "
         "house garden letter music winter summer city road").split()


def text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    docs = ["\n".join(text(12, 10 * d + i) for i in range(10)) for d in range(30)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory) -> Path:
    return Tokenizer.train([corpus], vocab_size=120).save(tmp_path_factory.mktemp("tok") / "tok")


# --------------------------------------------------------------------------- model configs and weights


@pytest.mark.parametrize("field, value, message", [
    ("layer_norm_eps", -1e-5, "model.layer_norm_eps is out of range"),
    ("num_heads", 0, "model.num_heads must be between 1"),
    ("hidden_size", "768", None),  # a digit string is read as the number
    ("hidden_size", "wide", "model.hidden_size: expected an integer, got 'wide'"),
    ("dropout", "0.1x", "model.dropout: expected a number"),
    ("vocab_size", 10**9, "model.vocab_size must be between 1 and 16,777,216"),
    ("max_positions", -4, "model.max_positions must be between 1"),
    ("embedding_size", "wide", "model.embedding_size: expected an integer or null, got 'wide'"),  # a union, in words
])
def test_model_config_fields_are_checked_by_name(field, value, message):
    if message is None:
        assert ModelConfig(**{field: value}).hidden_size == 768
        return
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{field: value})


def test_a_config_of_absurd_total_size_is_refused():
    with pytest.raises(ConfigError, match=r"model: about 6.4e\+11 parameters \(2,402 GiB in fp32\)"):
        ModelConfig(hidden_size=16384, num_layers=200, num_heads=16, intermediate_size=65536)


def tiny_bert_dir(tmp_path: Path) -> Path:
    cfg = model_config("bert-tiny", ["vocab_size=50", "hidden_size=16", "num_heads=2", "intermediate_size=32",
                                     "num_layers=1", "max_positions=16"])
    return save_model(build_model(cfg, "masked-lm"), tmp_path / "model")


@pytest.mark.parametrize("change, message", [
    ({"plmkit": {"task": "masked-lm", "config": {"layer_norm_eps": -1.0}}}, "model.layer_norm_eps is out of range"),
    ({"plmkit": {"task": "masked-lm", "config": {"num_heads": "two"}}}, "model.num_heads: expected an integer"),
    ({"plmkit": "yes"}, "the plmkit section needs"),
])
def test_config_json_errors_name_the_file_and_field(tmp_path, change, message):
    folder = tiny_bert_dir(tmp_path)
    (folder / "config.json").write_text(json.dumps(change))
    with pytest.raises(ConfigError, match=f"config.json: .*{message}"):
        load(folder)


def hf_bert_config() -> dict:
    return {"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": 50, "hidden_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16}


@pytest.mark.parametrize("key, value, message", [
    ("num_attention_heads", 0, "num_attention_heads .model.num_heads. must be between 1"),
    ("layer_norm_eps", -1, "layer_norm_eps is out of range"),
    ("hidden_size", "16", None),
    ("hidden_size", [16], "hidden_size: expected an integer"),
    ("vocab_size", None, "missing field vocab_size"),
    ("hidden_act", "swishy", "hidden_act 'swishy' is not supported"),
])
def test_hf_config_json_errors_name_the_hf_field(tmp_path, key, value, message):
    from plmkit.models.hf_compat import config_from_hf

    d = hf_bert_config()
    d[key] = value
    if message is None:
        assert config_from_hf(d)[0].hidden_size == 16
        return
    with pytest.raises(ConfigError, match=message):
        config_from_hf(d, "x/config.json")


def test_nan_weights_are_refused_naming_the_tensor(tmp_path):
    folder = tiny_bert_dir(tmp_path)
    weights = load_file(folder / "model.safetensors")
    name = sorted(weights)[3]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(DataError, match=rf"model.safetensors: tensor {name} holds 1 NaN or infinite values"):
        load(folder)


def test_a_config_bigger_than_its_weights_is_refused_before_allocating(tmp_path, monkeypatch):
    folder = tiny_bert_dir(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["plmkit"]["config"]["vocab_size"] = 5_000_000  # 5e6 x 16 floats: 320 MB the file does not hold
    (folder / "config.json").write_text(json.dumps(cfg))
    built_on = []
    real_build = build_model

    def spy(config, task):
        built_on.append(torch.empty(0).device.type)
        return real_build(config, task)

    monkeypatch.setattr("plmkit.models.checkpoint_io.build_model", spy)
    with pytest.raises(ValueError, match=r"transformer.emb.tok.weight has shape \(50, 16\), the config expects "
                                         r"\(5000000, 16\)"):
        load(folder)
    assert built_on == ["meta"]  # only the shape skeleton was built
    cfg["plmkit"]["config"]["vocab_size"] = 50
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="new sequence-classification head would have"):
        load(folder, task="sequence-classification", num_labels=1 << 20, id2label=None)


# --------------------------------------------------------------------------- shards


@pytest.fixture()
def shard_dir(corpus, tok_dir, tmp_path) -> Path:
    return prepare(corpus, tok_dir, tmp_path / "shards", holdout=0.1, workers=1, progress=False)


def test_truncated_or_changed_shard_files_are_detected(shard_dir):
    tokens = shard_dir / "train" / "tokens.bin"
    data = tokens.read_bytes()
    tokens.write_bytes(data[:-2])
    with pytest.raises(IntegrityError, match=r"train/tokens.bin: \d+ bytes, but meta.json records .*rebuild"):
        ShardSet.open(shard_dir)
    tokens.write_bytes(data)
    ShardSet.open(shard_dir)
    offsets = np.fromfile(shard_dir / "train" / "sentences.bin", dtype=np.int64)
    offsets[[3, 4]] = offsets[[4, 3]]
    offsets.tofile(shard_dir / "train" / "sentences.bin")
    with pytest.raises(IntegrityError, match=r"train/sentences.bin: offsets are not an increasing list"):
        ShardSet.open(shard_dir)


def permuted_vocab(tok_dir: Path, out: Path) -> Path:
    """The same tokenizer with two ordinary tokens swapped: same size, other ids."""
    lines = (tok_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    i, j = len(lines) - 3, len(lines) - 4
    lines[i], lines[j] = lines[j], lines[i]
    out.mkdir()
    (out / "vocab.txt").write_text("\n".join(lines), encoding="utf-8")
    return out


def test_a_replaced_tokenizer_beside_the_shards_is_detected(shard_dir, tmp_path):
    other = Tokenizer.load(permuted_vocab(shard_dir / "tokenizer", tmp_path / "other"))
    assert other.vocab_size == ShardSet.open(shard_dir).vocab_size
    for f in (shard_dir / "tokenizer").iterdir():
        f.unlink()
    other.save(shard_dir / "tokenizer")
    with pytest.raises(IntegrityError, match=r"tokenizer: not the tokenizer these shards were built with "
                                             r"\(the tokens or their ids differ\)"):
        ShardSet.open(shard_dir)


def test_init_from_a_model_with_another_vocabulary_is_refused(shard_dir, tmp_path):
    from plmkit.recipes.pretrain import load_config, pretrain

    other_tok = Tokenizer.load(permuted_vocab(shard_dir / "tokenizer", tmp_path / "other-tok"))
    cfg = model_config("bert-tiny", [f"vocab_size={other_tok.vocab_size}", "hidden_size=16", "num_heads=2",
                                     "intermediate_size=32", "num_layers=1", "max_positions=32"])
    model_dir = save_model(build_model(cfg, "pretraining"), tmp_path / "model", tokenizer=other_tok)
    run = load_config("bert-tiny", [f"data.path={shard_dir}", "train.max_steps=1", "data.max_length=16",
                                    "train.batch_size=2", "data.eval_examples=0", f"init_from={model_dir}",
                                    "train.progress=false"])
    with pytest.raises(UserError, match=r"is not the one saved with the model it starts from .*2 of \d+ tokens have "
                                        r"another id .*plmkit prepare CORPUS --tokenizer"):
        pretrain(run, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written


# --------------------------------------------------------------------------- checkpoints


class Stream:
    def __init__(self) -> None:
        self.position = 0

    def __iter__(self):
        while True:
            ids = torch.randint(3, 64, (2, 8), generator=torch.Generator().manual_seed(self.position))
            self.position += 1
            yield {"input_ids": ids, "labels": ids}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def tiny_gpt() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = model_config("gpt-tiny", ["vocab_size=64", "hidden_size=32", "intermediate_size=64", "max_positions=32",
                                    "pad_token_id=0", "bos_token_id=1", "eos_token_id=2"])
    return build_model(cfg, "causal-lm")


def test_a_damaged_checkpoint_is_named_and_the_previous_one_used(tmp_path, caplog):
    cfg = TrainConfig(lr=1e-3, max_steps=4, batch_size=2, save_every=1, keep_last=0, log_every=1, progress=False)
    train(tiny_gpt(), Stream(), cfg, tmp_path)
    newest = tmp_path / "checkpoint-00000004"
    weights = newest / "optimizer.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # same size, one byte flipped in the tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="optimizer.safetensors: damaged .its CRC-32 differs"):
        ckpt.verify_checkpoint(newest)
    with caplog.at_level(logging.WARNING):
        result = train(tiny_gpt(), Stream(), TrainConfig(**{**cfg.__dict__, "max_steps": 5}), tmp_path,
                       resume="auto")
    assert result.start_step == 3 and result.step == 5
    assert "checkpoint-00000004/optimizer.safetensors: damaged" in caplog.text
    assert "resuming from checkpoint-00000003 instead" in caplog.text
    (tmp_path / "checkpoint-00000003" / "model.safetensors").write_bytes(b"")
    with pytest.raises(IntegrityError, match="model.safetensors: damaged .0 bytes"):  # named explicitly: no fallback
        train(tiny_gpt(), Stream(), cfg, tmp_path, resume=tmp_path / "checkpoint-00000003")


# --------------------------------------------------------------------------- long lines


def test_bounded_pieces_cut_before_whitespace():
    line = "ab cd ef" * 10
    pieces = list(bounded_pieces(line, 7))
    assert "".join(pieces) == line and all(len(p) <= 7 for p in pieces)
    assert all(p[0] == " " for p in pieces[1:] if not p.startswith("ef"))
    assert list(bounded_pieces("x" * 20, 8)) == ["x" * 8, "x" * 8, "x" * 4]  # no whitespace: cut anywhere
    assert list(bounded_pieces("short", 8)) == ["short"]


def test_a_long_line_gives_the_same_shards_and_tokenizer_in_pieces(tmp_path, tok_dir, monkeypatch):
    line = text(60_000, seed=7)  # ~300k characters on one line: several pieces
    path = tmp_path / "long.txt"
    path.write_text(line + "\n" + text(20) + "\n\n" + line[:5000] + "\n", encoding="utf-8")
    pieced = prepare(path, tok_dir, tmp_path / "pieced", holdout=0.0, workers=1, progress=False)
    tok_pieced = Tokenizer.train([path], vocab_size=200)
    monkeypatch.setattr(shards_module, "_PIECE_CHARS", 10**9)
    monkeypatch.setattr(tokenizer_module, "_PIECE_CHARS", 10**9)
    whole = prepare(path, tok_dir, tmp_path / "whole", holdout=0.0, workers=1, progress=False)
    tok_whole = Tokenizer.train([path], vocab_size=200)
    # the same word counts, learned in another order (ties between equal counts may fall either way)
    assert tok_whole.vocab_size == tok_pieced.vocab_size
    n_whole, n_pieced = (len(t.encode(line, add_special_tokens=False)) for t in (tok_whole, tok_pieced))
    assert abs(n_whole - n_pieced) <= 0.02 * n_whole
    a, b = ShardSet.open(pieced), ShardSet.open(whole)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.word_start, b.word_start)
    assert np.array_equal(a.sentence_offsets, b.sentence_offsets)
    tok = Tokenizer.load(tok_dir)
    assert a.sentence(0).tolist() == tok.backend.encode(line, add_special_tokens=False).ids


def test_leftovers_of_a_killed_run_are_removed_under_the_lock(tmp_path):
    cfg = TrainConfig(lr=1e-3, max_steps=2, batch_size=2, save_every=1, log_every=1, progress=False)
    train(tiny_gpt(), Stream(), cfg, tmp_path)
    leftovers = [tmp_path / ".tmp-checkpoint-00000003", tmp_path / "final" / ".model.safetensors.tmp-424242",
                 tmp_path / ".run.json.tmp-424242"]
    leftovers[0].mkdir()
    for f in leftovers[1:]:
        f.write_bytes(b"half")
    result = train(tiny_gpt(), Stream(), TrainConfig(**{**cfg.__dict__, "max_steps": 3}), tmp_path, resume="auto")
    assert result.step == 3 and not any(p.exists() for p in leftovers)
