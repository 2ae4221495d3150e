"""The web page in headless Chromium (Debian's chromium + chromedriver): typing, running, reading
results with their inputs and label names, options as form fields, a streamed generation,
highlighted spans over emoji / CJK / combining marks, and the explanation view."""

from __future__ import annotations

import httpx
import pytest
from conftest import classifier_pipe, generator_pipe, ner_pipe, serving
from webdriver import Browser, missing_browser

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=f"no browser: {missing_browser()}")


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


def load(browser: Browser, url: str) -> None:
    browser.open(url)
    browser.wait("return document.body.dataset.ready === 'true'")


def test_classifier_page_shows_inputs_label_names_and_an_explanation(browser, bert_tokenizer):
    with serving(classifier_pipe(bert_tokenizer)) as s:
        load(browser, s.url + "/")
        browser.type("#text", "a gripping, funny film")
        browser.js("document.getElementById('options-box').open = true")
        browser.type("#opt-top_k", "2")
        browser.click("#run")
        browser.wait("return document.querySelectorAll('.card .label').length === 2")
        card = browser.js("const c = document.querySelector('.card'); return {input: c.querySelector('.input').textContent,"
                          " labels: [...c.querySelectorAll('.label')].map(e => e.textContent)}")
        expected = httpx.post(f"{s.url}/predict", json={"inputs": "a gripping, funny film", "top_k": 2}).json()
        assert card["input"] == "a gripping, funny film"
        assert card["labels"] == [x["label"] for x in expected["outputs"]["labels"]]
        assert set(card["labels"]) == {"negative", "positive"}

        browser.click("#explain-button")
        browser.wait("return document.querySelectorAll('#attention tbody tr').length > 0")
        view = browser.js("return {chips: [...document.querySelectorAll('#attribution .token')].map(e => e.textContent),"
                          " rows: document.querySelectorAll('#attention tbody tr').length,"
                          " target: document.querySelector('#attribution .target').textContent}")
        tokens = bert_tokenizer.encode("a gripping, funny film").tokens
        assert view["chips"] == list(tokens) and view["rows"] == len(tokens)
        assert view["target"] == expected["outputs"]["label"]


def test_generation_page_streams_and_takes_options_as_fields(browser, gpt_tokenizer):
    with serving(generator_pipe(gpt_tokenizer)) as s:
        load(browser, s.url + "/")
        assert browser.js("return document.getElementById('opt-max_new_tokens').type") == "number"
        browser.type("#text", "Once upon a time")
        browser.js("document.getElementById('options-box').open = true")
        browser.type("#opt-max_new_tokens", "12")
        browser.click("#run")
        browser.wait("const m = document.getElementById('more'); return m && m.dataset.done === 'true'")
        shown = browser.js("return {prompt: document.getElementById('prompt').textContent,"
                           " more: document.getElementById('more').textContent,"
                           " input: document.querySelector('.card .input').textContent}")
        expected = httpx.post(f"{s.url}/predict", json={"inputs": "Once upon a time", "max_new_tokens": 12,
                                                         "return_full_text": False}).json()["outputs"]
        assert shown["more"] == expected["generated_text"] != ""
        assert shown["prompt"] == shown["input"] == "Once upon a time"


def test_entity_spans_are_right_over_emoji_cjk_and_combining_marks(browser, bert_tokenizer):
    text = "\U0001F600 Paris \u5317\u4eac e\u0301cole \U0001F44D\U0001F3FD London \u00e9t\u00e9"
    with serving(ner_pipe(bert_tokenizer)) as s:
        load(browser, s.url + "/")
        browser.js("document.getElementById('text').value = arguments[0]", text)
        browser.click("#run")
        browser.wait("return document.querySelectorAll('.card mark').length > 0")
        marks = browser.js("return [...document.querySelectorAll('.card mark .span')].map(e => e.textContent)")
        entities = httpx.post(f"{s.url}/predict", json={"inputs": text}).json()["outputs"]["entities"]
    assert marks == [e["word"] for e in entities] == [text[e["start"]:e["end"]] for e in entities]
    assert "London" in marks and any("\u5317" in m for m in marks)
