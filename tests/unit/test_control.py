"""Cooperative cancellation: pipelines stop between batches and generation between tokens."""

from __future__ import annotations

import pytest
import torch

from plmkit.infer.control import Cancelled, Control, checkpoint, controlled
from plmkit.infer.generation import generate, stream_text

SMALL_VOCAB = {"vocab_size": 100, "eos_token_id": 99, "bos_token_id": 99, "pad_token_id": 99}


def stop_after(n: int) -> Control:
    control = Control()
    control.should_stop = lambda: "enough" if control.steps >= n else None
    return control


def test_checkpoint_outside_a_controlled_block_does_nothing():
    checkpoint()  # no control: no error, nothing counted


def test_generation_stops_at_the_step_its_control_says(tiny):
    model = tiny("gpt-tiny", "causal-lm", **SMALL_VOCAB)
    control = stop_after(5)
    with controlled(control), pytest.raises(Cancelled, match="enough"):
        generate(model, [[1, 2, 3]], max_new_tokens=40, stop_token_ids=[])
    assert control.steps == 5
    for beams in (1, 3):
        done = Control()
        with controlled(done):
            out = generate(model, [[1, 2], [3]], max_new_tokens=6, stop_token_ids=[], num_beams=beams)
        assert done.tokens == sum(len(t) for t in out.tokens) == 12 and done.steps >= 6


def test_a_stream_returns_its_output_and_stops_when_told(tiny):
    class Bytes:  # a stand-in tokenizer: one letter per token
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(97 + i % 26) for i in ids)

        def encode(self, text, add_special_tokens=True):
            class E:
                ids = [1, 2]
            return E()

    model = tiny("gpt-tiny", "causal-lm", **SMALL_VOCAB)
    pieces = stream_text(model, Bytes(), "x", max_new_tokens=5, stop_token_ids=[])
    text = ""
    while True:
        try:
            text += next(pieces)
        except StopIteration as stop:
            output = stop.value
            break
    assert len(output.tokens[0]) == 5 and output.finish_reasons == ["length"] and len(text) == 5
    with controlled(stop_after(2)), pytest.raises(Cancelled):
        list(stream_text(model, Bytes(), "x", max_new_tokens=50, stop_token_ids=[]))


def test_a_pipeline_stops_between_batches(shared_data, tiny):
    from plmkit.data.tokenizer import Tokenizer
    from plmkit.infer.pipeline import pipeline

    tok = Tokenizer.load(shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    pipe = pipeline("feature-extraction", tiny("bert-tiny", "masked-lm"), tokenizer=tok,
                    batch_size=2)
    control = stop_after(3)
    with controlled(control), pytest.raises(Cancelled):
        pipe(["a text"] * 20)
    assert control.steps == 3
    assert torch.is_grad_enabled()
