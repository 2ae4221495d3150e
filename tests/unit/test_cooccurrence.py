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
