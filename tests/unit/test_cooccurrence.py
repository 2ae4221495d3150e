"""Co-occurrence token vectors: counts within documents and the window, PPMI, vectors that put
tokens of the same contexts together, and their use as a fresh model's embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from plmkit.data.cooccurrence import cooccurrence_counts, cooccurrence_embeddings, ppmi
from plmkit.data.shards import prepare
from plmkit.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tokenizer]:
    """Documents where "cat" and "dog" share every context and "car" / "road" have others."""
    folder = tmp_path_factory.mktemp("cooc")
    rng = np.random.default_rng(0)
    pets = ["the {} sat on the mat", "a {} chased the ball", "my {} is sleeping now", "feed the {} at noon"]
    cars = ["drive the {} on the road", "the {} needs new tyres", "park the {} near the station"]
    docs = []
    for _ in range(300):
        docs.append(rng.choice(pets).format(rng.choice(["cat", "dog"])))
        docs.append(rng.choice(cars).format(rng.choice(["car", "truck"])))
    (folder / "corpus.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    vocab = shared_data / "vocab" / "bert-base-uncased-vocab.txt"
    shards = prepare(folder / "corpus.txt", vocab, folder / "shards", holdout=0.0, progress=False)
    return shards, Tokenizer.load(vocab)


def test_counts_are_symmetric_weighted_and_stay_inside_documents(corpus) -> None:
    shards, tok = corpus
    counts, read = cooccurrence_counts([(shards, 1.0)], window=2)
    assert read > 0 and (counts != counts.T).nnz == 0
    cat, dog, mat, road = (tok.token_to_id(w) for w in ("cat", "dog", "mat", "road"))
    assert counts[cat, dog] == 0  # never in one document
    assert counts[mat, road] == 0  # a pet document and a car document are neighbours, but not one document
    assert counts[tok.token_to_id("sat"), cat] > 0
    specials = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    assert all(counts[s].nnz == 0 for s in specials)
    positive = ppmi(counts)
    assert positive.nnz > 0 and positive.data.min() > 0


def test_tokens_of_the_same_contexts_get_close_vectors(corpus) -> None:
    shards, tok = corpus
    vectors, seen = cooccurrence_embeddings([(shards, 1.0)], dim=4, window=3)
    assert vectors.shape == (tok.vocab_size, 4) and vectors.dtype == np.float32
    ids = {w: tok.token_to_id(w) for w in ("cat", "dog", "car", "truck")}
    assert all(seen[i] for i in ids.values()) and not seen[tok.token_to_id("zebra")]

    def cos(a: str, b: str) -> float:
        x, y = vectors[ids[a]], vectors[ids[b]]
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    assert cos("cat", "dog") > 0.9 and cos("car", "truck") > 0.9
    assert cos("cat", "car") < cos("cat", "dog") - 0.5
    again, _ = cooccurrence_embeddings([(shards, 1.0)], dim=4, window=3)
    np.testing.assert_array_equal(again, vectors)  # the same vectors on every call


def test_pretraining_starts_from_cooccurrence_embeddings(corpus, tmp_path: Path) -> None:
    from plmkit.recipes.pretrain import load_config, pretrain

    shards, tok = corpus
    common = [f"data.path={shards}", "model.num_layers=1", "model.hidden_size=16", "model.num_heads=2",
              "model.intermediate_size=32", "train.max_steps=1", "train.save_every=0", "train.progress=false",
              "data.eval_examples=0", "data.max_length=32", "train.batch_size=4", "train.lr=1e-9"]
    for preset in ("bert-mini", "bert-small"):  # the small presets' recipe (benchmarks/README.md)
        cfg = load_config(preset)
        assert cfg.embeddings.init == "cooccurrence" and cfg.train.layer_decay == 0.5
        assert cfg.data.options == {"mlm_probability": 0.4}
    plain = pretrain(load_config("bert-mini", common + ["embeddings.init=random"]), tmp_path / "plain")
    init = pretrain(load_config("bert-mini", common + ["embeddings.init=cooccurrence", "embeddings.window=3"]),
                    tmp_path / "init")
    from plmkit.models import load

    a, b = (load(r.final_dir).transformer.emb.tok.weight.detach() for r in (plain, init))
    cat, dog, zebra = (tok.token_to_id(w) for w in ("cat", "dog", "zebra"))
    assert torch.equal(a[zebra], b[zebra])  # a token that never occurs keeps its random vector
    assert torch.nn.functional.cosine_similarity(b[cat], b[dog], dim=0) > 0.9
    assert abs(float(b[[cat, dog]].std()) - 0.02) < 0.02
    # Continuing from a checkpoint keeps its embeddings, whatever the preset's embeddings.init says.
    cont = pretrain(load_config("bert-mini", common + [f"init_from={plain.final_dir}"]), tmp_path / "cont")
    c = load(cont.final_dir).transformer.emb.tok.weight.detach()
    assert torch.allclose(a, c, atol=1e-6)


def test_the_embedding_stage_alone_is_a_model_folder(corpus, tmp_path: Path) -> None:
    """save_initial_model writes the model pretraining starts from (co-occurrence embeddings,
    random layers) with the shards' tokenizer; pretraining from it with init_from keeps them."""
    from plmkit.data.tokenizer import Tokenizer
    from plmkit.models import load
    from plmkit.recipes.pretrain import load_config, pretrain, save_initial_model

    shards, tok = corpus
    common = [f"data.path={shards}", "model.num_layers=1", "model.hidden_size=16", "model.num_heads=2",
              "model.intermediate_size=32", "embeddings.window=3"]
    folder = save_initial_model(load_config("bert-mini", common), tmp_path / "stage1")
    table = load(folder).transformer.emb.tok.weight.detach()
    cat, dog, zebra = (tok.token_to_id(w) for w in ("cat", "dog", "zebra"))
    assert torch.nn.functional.cosine_similarity(table[cat], table[dog], dim=0) > 0.9
    assert Tokenizer.load(folder).get_vocab() == tok.get_vocab()
    run = [f"init_from={folder}", "train.max_steps=1", "train.save_every=0", "train.progress=false",
           "data.eval_examples=0", "data.max_length=32", "train.batch_size=4", "train.lr=1e-9"]
    stage2 = pretrain(load_config("bert-mini", common + run), tmp_path / "stage2")
    assert torch.allclose(load(stage2.final_dir).transformer.emb.tok.weight.detach(), table, atol=1e-6)


def test_pretrain_cli_continues_a_model_with_a_cooccurrence_preset(corpus, tmp_path: Path) -> None:
    """`plmkit pretrain --config bert-mini --init-from MODEL`: the preset's embeddings.init does not
    stand in the way, and the model's embeddings are the ones training starts from."""
    from plmkit.cli import main
    from plmkit.models import load
    from plmkit.recipes.pretrain import load_config, save_initial_model

    shards, _ = corpus
    shape = ["model.num_layers=1", "model.hidden_size=16", "model.num_heads=2", "model.intermediate_size=32"]
    start = save_initial_model(load_config("bert-mini", [f"data.path={shards}", "embeddings.init=random"] + shape),
                               tmp_path / "start")
    flags = [f"--set={item}" for item in shape + ["train.max_steps=1", "train.save_every=0", "train.progress=false",
                                                 "data.eval_examples=0", "data.max_length=32", "train.batch_size=4",
                                                 "train.lr=1e-9"]]
    assert main(["pretrain", "--config", "bert-mini", "--shards", str(shards), "--init-from", str(start),
                 "-o", str(tmp_path / "run"), *flags]) == 0
    before = load(start).transformer.emb.tok.weight.detach()
    after = load(tmp_path / "run" / "final").transformer.emb.tok.weight.detach()
    assert torch.allclose(before, after, atol=1e-6)


def test_a_fresh_masked_lm_head_starts_at_the_unigram_frequencies(corpus) -> None:
    """embeddings.output_bias=unigram: the output bias of every MLM head (BERT's, ELECTRA's
    generator's) is the shards' log unigram probabilities minus their mean; zero keeps zeros."""
    from plmkit.data.shard_set import ShardSet, unigram_log_probs
    from plmkit.models.bert import MLMHead
    from plmkit.recipes.pretrain import fresh_model, load_config

    shards, tok = corpus
    common = [f"data.path={shards}", "model.num_layers=1", "model.hidden_size=16", "model.num_heads=2",
              "model.intermediate_size=32", "embeddings.init=random"]
    train = ShardSet.open(shards, "train")
    counts = np.bincount(np.asarray(train.tokens), minlength=tok.vocab_size)
    counts[train.specials.present()] = 0  # special tokens are never the most frequent word
    want = unigram_log_probs(train)
    assert np.exp(want).sum() == pytest.approx(1.0)
    assert int(np.argmax(want)) == int(np.argmax(counts))
    for preset in ("bert-mini", "electra-mini"):
        cfg = load_config(preset, common)
        assert cfg.embeddings.output_bias == "unigram"  # the default
        model = fresh_model(cfg, cfg.model)
        heads = [m for m in model.modules() if isinstance(m, MLMHead)]
        assert heads
        for head in heads:
            bias = head.bias.detach().double().numpy()
            np.testing.assert_allclose(bias, want - want.mean(), atol=1e-5)
        zero = fresh_model(load_config(preset, common + ["embeddings.output_bias=zero"]), cfg.model)
        assert all((m.bias == 0).all() for m in zero.modules() if isinstance(m, MLMHead))


def test_pretrain_cli_writes_the_start_alone(corpus, tmp_path: Path) -> None:
    """`plmkit pretrain --start-only -o OUT`: the model pretraining starts from, in OUT/final (what
    finetune loads from OUT), in seconds; a folder holding a run or other files is refused as it is."""
    from plmkit.cli import main
    from plmkit.models import load
    from plmkit.rundir import model_dir

    shards, tok = corpus
    shape = [f"--set=model.{k}" for k in ("num_layers=1", "hidden_size=16", "num_heads=2", "intermediate_size=32")]
    out = tmp_path / "start"
    assert main(["pretrain", "--config", "bert-mini", "--shards", str(shards), "--start-only", "-o", str(out),
                 "--set=embeddings.window=3", *shape]) == 0
    assert model_dir(out) == out / "final"
    model = load(out)
    table = model.transformer.emb.tok.weight.detach()
    cat, dog = tok.token_to_id("cat"), tok.token_to_id("dog")
    assert torch.nn.functional.cosine_similarity(table[cat], table[dog], dim=0) > 0.9
    assert model.mlm.bias.abs().max() > 0  # the unigram output bias
    before = (out / "final" / "model.safetensors").read_bytes()
    assert main(["pretrain", "--shards", str(shards), "--start-only", "-o", str(out), *shape]) != 0
    assert (out / "final" / "model.safetensors").read_bytes() == before  # a run's model is not replaced
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep", encoding="utf-8")
    assert main(["pretrain", "--shards", str(shards), "--start-only", "-o", str(other), *shape]) != 0
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert main(["pretrain", "--shards", str(shards), "--start-only", "--init-from", str(out), "-o",
                 str(tmp_path / "x"), *shape]) != 0
