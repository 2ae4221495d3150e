"""Inference pipelines on tiny random models saved with a real tokenizer: structures, batching, spans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import plmkit
from plmkit.config import model_config
from plmkit.data.tokenizer import Tokenizer
from plmkit.infer.pipeline import group_entities, pipeline, word_predictions
from plmkit.models import build_model

TINY = ["hidden_size=32", "num_heads=2", "intermediate_size=64", "num_layers=2", "max_positions=64",
        "initializer_range=0.2"]
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
TEXTS = ["a gripping, funny film", "dull", "the plot of this movie was hard to follow but the actors were great",
         "Paris is lovely in the spring"]


@pytest.fixture(scope="module")
def bert_tok(shared_data: Path) -> Tokenizer:
    return Tokenizer.load(shared_data / "vocab" / "bert-base-uncased-vocab.txt")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, bert_tok):
    """Save a tiny BERT with the given head (and labels) once per module; returns its folder."""
    made: dict[str, Path] = {}

    def make(task: str, *extra: str) -> Path:
        key = task + "|" + "|".join(extra)
        if key not in made:
            torch.manual_seed(0)
            model = build_model(model_config("bert-tiny", TINY + list(extra)), task)
            made[key] = model.save_pretrained(tmp_path_factory.mktemp(task), bert_tok)
        return made[key]

    return make


def test_text_classification_labels_topk_and_pairs(model_dir):
    clf = pipeline("text-classification", model_dir("sequence-classification", "id2label={0: neg, 1: pos}"))
    one = clf(TEXTS[0])
    assert set(one) == {"label", "score"} and one["label"] in ("neg", "pos")
    full = clf(TEXTS[0], top_k=None)
    assert sorted(x["label"] for x in full["labels"]) == ["neg", "pos"]
    assert full["labels"][0]["score"] >= full["labels"][1]["score"]
    assert sum(x["score"] for x in full["labels"]) == pytest.approx(1.0, abs=1e-5)
    assert full["labels"][0]["label"] == one["label"]
    pair_dict = clf({"text": "the film", "text_pair": "it was fun"})
    pair_tuple = clf(("the film", "it was fun"))
    assert pair_dict == pair_tuple
    assert pair_dict["score"] != pytest.approx(clf("the film")["score"], abs=1e-7)
    with pytest.raises(ValueError, match="text_pair"):
        clf({"txt": "oops"})


def test_batched_equals_one_by_one_and_keeps_order(model_dir):
    clf = pipeline("text-classification", model_dir("sequence-classification"), batch_size=3)
    batched = clf(TEXTS, top_k=None)
    assert isinstance(batched, list) and len(batched) == len(TEXTS)
    for text, result in zip(TEXTS, batched):
        single = clf(text, top_k=None)
        assert [x["label"] for x in single["labels"]] == [x["label"] for x in result["labels"]]
        assert [x["score"] for x in single["labels"]] == pytest.approx([x["score"] for x in result["labels"]], abs=1e-5)


def test_bf16_autocast_is_close_to_fp32(model_dir):
    path = model_dir("sequence-classification")
    fp32 = pipeline("text-classification", path, top_k=None)(TEXTS[:2])
    bf16 = pipeline("text-classification", path, top_k=None, dtype="bf16")(TEXTS[:2])
    for a, b in zip(fp32, bf16):
        scores_a = {x["label"]: x["score"] for x in a["labels"]}
        scores_b = {x["label"]: x["score"] for x in b["labels"]}
        assert scores_a == pytest.approx(scores_b, abs=0.05)
    with pytest.raises(ValueError, match="dtype"):
        pipeline("text-classification", path, dtype="int8")


def test_token_classification_offsets_index_the_original_text(model_dir):
    ner = pipeline("token-classification", model_dir("token-classification", f"id2label={NER_LABELS}"))
    text = "  John Johanson moved to  New-York City,   Ünïcode Straße!"
    words = ner(text, aggregation="none", ignore_labels=())["entities"]
    assert [w["word"] for w in words][:3] == ["John", "Johanson", "moved"]
    for w in words:
        assert text[w["start"]: w["end"]] == w["word"] and w["entity"] in NER_LABELS.values()
    entities = ner(text)["entities"]
    assert entities  # the random head tags some words, so the checks below are not vacuous
    for e in entities:
        assert text[e["start"]: e["end"]] == e["word"] and e["entity_group"] in ("PER", "LOC")
        assert 0.0 < e["score"] <= 1.0
    batched = ner([text, "Ann"])[0]["entities"]
    assert [(e["entity_group"], e["start"], e["end"]) for e in batched] == [
        (e["entity_group"], e["start"], e["end"]) for e in entities]
    assert [e["score"] for e in batched] == pytest.approx([e["score"] for e in entities], abs=1e-5)


def test_word_takes_its_first_piece_and_entities_group_bio(bert_tok):
    names = list(NER_LABELS.values())
    text = "johanson visited new york"
    enc = bert_tok.encode(text)
    assert enc.tokens[1:4] == ["johan", "##son", "visited"]
    probs = np.full((len(enc.ids), len(names)), 0.01)
    for t, tag in enumerate(["O", "B-PER", "O", "O", "B-LOC", "I-LOC", "O"]):
        probs[t, names.index(tag)] = 0.9
    words = word_predictions(text, enc, probs, names)
    assert [(w["word"], w["entity"]) for w in words] == [
        ("johanson", "B-PER"), ("visited", "O"), ("new", "B-LOC"), ("york", "I-LOC")]
    grouped = group_entities(text, words)
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in grouped] == [
        ("PER", "johanson", 0, 8), ("LOC", "new york", 17, 25)]
    bioes = [dict(w, entity=tag) for w, tag in zip(words, ["S-PER", "B-LOC", "I-LOC", "E-LOC"])]
    assert [e["word"] for e in group_entities(text, bioes)] == ["johanson", "visited new york"]
    broken = [dict(w, entity=tag) for w, tag in zip(words, ["I-PER", "I-LOC", "O", "I-LOC"])]
    assert [e["word"] for e in group_entities(text, broken)] == ["johanson", "visited", "york"]


def test_question_answering_spans_are_exact_substrings_over_windows(model_dir):
    qa = pipeline("question-answering", model_dir("question-answering"), max_length=40, doc_stride=10)
    context = ("The Eiffel Tower, completed in 1889, stands in Paris.  It was designed by the engineering "
               "firm of Gustave Eiffel; at first many artists criticised it. ") * 3
    question = {"question": "Who designed the tower?", "context": context}
    assert len(qa.preprocess(question, qa.defaults)) > 2  # several overlapping windows
    best = qa(question, top_k=3)
    assert len(best["answers"]) == 3
    for answer in [best, *best["answers"]]:
        assert context[answer["start"]: answer["end"]] == answer["answer"] != ""
        assert answer["answer"] == answer["answer"].strip() and 0.0 < answer["score"] <= 1.0
    scores = [a["score"] for a in best["answers"]]
    assert scores == sorted(scores, reverse=True)
    batch = qa([question, ("Where?", "In Paris, France.")])
    assert batch[0]["answer"] == best["answer"] and batch[0]["score"] == pytest.approx(best["score"], rel=1e-4)
    assert "In Paris, France."[batch[1]["start"]: batch[1]["end"]] == batch[1]["answer"]


def test_fill_mask_top_tokens_agree_with_model_argmax(model_dir, bert_tok):
    path = model_dir("masked-lm")
    fill = pipeline("fill-mask", path, top_k=4)
    text = "paris is the [MASK] of <mask> ."
    result = fill(text)
    assert len(result["masks"]) == 2
    model = plmkit.load(path).eval()
    enc = bert_tok.encode(text.replace("<mask>", "[MASK]"))
    with torch.no_grad():
        logits = model(torch.tensor([enc.ids])).logits[0]
    for mask in result["masks"]:
        expected = logits[mask["index"]].topk(4).indices.tolist()
        assert [c["token"] for c in mask["candidates"]] == expected
        scores = [c["score"] for c in mask["candidates"]]
        assert scores == sorted(scores, reverse=True)
        top = mask["candidates"][0]
        assert top["token_str"] in top["sequence"] and "[MASK]" in top["sequence"]
    with pytest.raises(ValueError, match="no mask token"):
        fill("nothing to fill")


def test_feature_extraction_mean_pooling_ignores_padding(model_dir, bert_tok):
    path = model_dir("masked-lm")
    fe = pipeline("feature-extraction", path, batch_size=8)
    alone = np.array(fe("short")["embedding"])
    padded = np.array(fe(["short", TEXTS[2]])[0]["embedding"])
    np.testing.assert_allclose(alone, padded, atol=1e-5)
    model = plmkit.load(path).eval()
    with torch.no_grad():
        h = model(torch.tensor([bert_tok.encode("short").ids])).hidden_states[0]
    np.testing.assert_allclose(alone, h.mean(dim=0).numpy(), atol=1e-5)
    unit = np.array(fe("short", normalize=True)["embedding"])
    assert np.linalg.norm(unit) == pytest.approx(1.0, abs=1e-5)
    cls = np.array(fe("short", pooling="cls")["embedding"])
    np.testing.assert_allclose(cls, h[0].numpy(), atol=1e-5)


def test_decoder_classifier_and_auto_task(shared_data, tmp_path):
    tok = Tokenizer.load(shared_data / "vocab" / "gpt2-vocab.json", merges=shared_data / "vocab" / "gpt2-merges.txt")
    model = build_model(model_config("gpt-tiny", TINY), "sequence-classification")
    clf = pipeline("auto", model, tokenizer=tok)
    assert clf.task == "text-classification"
    batched = clf(TEXTS, top_k=None)
    for text, result in zip(TEXTS, batched):
        assert clf(text, top_k=None)["labels"][0]["score"] == pytest.approx(result["labels"][0]["score"], abs=1e-5)


def test_wrong_head_unknown_task_and_options_are_clear_errors(model_dir, bert_tok):
    path = model_dir("token-classification", f"id2label={NER_LABELS}")
    with pytest.raises(ValueError, match="fill-mask needs an encoder with a masked-lm.*token-classification head"):
        pipeline("fill-mask", path)
    with pytest.raises(ValueError, match="unknown task 'sentiment'"):
        pipeline("sentiment", path)
    with pytest.raises(ValueError, match="unknown option.*top_kk.*valid options: aggregation"):
        pipeline("token-classification", path)("x", top_kk=3)
    with pytest.raises(ValueError, match="needs tokenizer="):
        pipeline("token-classification", plmkit.load(path))
    assert pipeline("auto", path).task == "token-classification"
    assert pipeline("auto", model_dir("masked-lm")).task == "fill-mask"
    with pytest.raises(ValueError, match="input 1: expected a text"):
        pipeline("token-classification", path)(["fine", 3])


def test_run_directory_and_recipe_pick_the_model_and_task(tmp_path, bert_tok):
    run = tmp_path / "run"
    cfg = model_config("seq2seq-small", TINY + ["num_decoder_layers=1", "vocab_size=30522"])
    build_model(cfg, "seq2seq-lm").save_pretrained(run / "final", bert_tok)
    assert pipeline("auto", run).task == "summarization"
    (run / "finetune.json").write_text('{"task": "translation", "config": {}}', encoding="utf-8")
    assert pipeline("auto", run).task == "translation"
    build_model(model_config("bert-tiny", TINY), "masked-lm").save_pretrained(run / "best", bert_tok)
    assert pipeline("auto", run).model.task == "masked-lm"  # best/ before final/
    with pytest.raises(FileNotFoundError, match="no such run or model directory"):
        pipeline("auto", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json here nor in"):
        pipeline("auto", tmp_path / "empty")


@pytest.fixture(scope="module")
def gpt(shared_data):
    tok = Tokenizer.load(shared_data / "vocab" / "gpt2-vocab.json", merges=shared_data / "vocab" / "gpt2-merges.txt")
    torch.manual_seed(0)
    return build_model(model_config("gpt-tiny", TINY), "causal-lm"), tok


def test_text_generation_batches_like_single_prompts_and_matches_generate_text(gpt):
    from plmkit.infer.generation import generate_text

    model, tok = gpt
    gen = pipeline("text-generation", model, tokenizer=tok, max_new_tokens=5, batch_size=2)
    prompts = ["Once upon a time", "Hi", "The quick brown fox jumps"]
    batched = gen(prompts)
    for prompt, result in zip(prompts, batched):
        assert result == gen(prompt)
        assert result["generated_text"].startswith(prompt) and result["finish_reason"] in ("length", "stop_token")
    only_new = gen(prompts[0], return_full_text=False)["generated_text"]
    assert only_new == generate_text(model, tok, [prompts[0]], max_new_tokens=5)[0]
    assert batched[0]["generated_text"] == prompts[0] + only_new
    with pytest.raises(ValueError, match="generation.temprature"):
        gen("x", temprature=0.5)


def test_summarization_with_a_decoder_and_translation_with_an_encoder_decoder(gpt, bert_tok):
    model, tok = gpt
    summarize = pipeline("summarization", model, tokenizer=tok, max_new_tokens=4)
    prompt_ids = summarize.preprocess("word " * 200, summarize.defaults)[0].inputs["input_ids"]
    assert prompt_ids[-1] == tok.encode("\n", add_special_tokens=False).ids[0]
    assert len(prompt_ids) + 4 <= model.config.max_positions
    out = summarize(["a short text", "word " * 200])
    assert all(set(o) == {"summary_text", "finish_reason"} for o in out)
    cfg = model_config("seq2seq-small", TINY + ["vocab_size=30522", "num_decoder_layers=1", "bos_token_id=101",
                                                "eos_token_id=102", "decoder_start_token_id=101"])
    translate = pipeline("translation", build_model(cfg, "seq2seq-lm"), tokenizer=bert_tok, max_new_tokens=4)
    texts = ["hello world", "a much longer sentence that needs translating"]
    batched = translate(texts)
    assert batched == [translate(t) for t in texts]
    assert set(batched[0]) == {"translation_text", "finish_reason"}
    with pytest.raises(ValueError, match="translation needs a causal-lm decoder or an encoder-decoder"):
        pipeline("translation", build_model(model_config("bert-tiny", TINY), "masked-lm"), tokenizer=bert_tok)
