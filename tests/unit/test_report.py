"""The demo's report (one self-contained HTML page) and the packaging of the demo's samples."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

from plmkit.recipes.demo import SAMPLES, bundled_data, report_data
from plmkit.recipes.report import render_html_report, write_html_report

REPO = Path(__file__).resolve().parents[2]


class Page(HTMLParser):
    """The parts of a page the tests look at: tags with their attributes, per chart."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.charts: list[dict] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attrs))
        if tag == "svg":
            self.charts.append({"label": attrs.get("aria-label"), "class": attrs.get("class"), "points": [],
                                "bars": [], "lines": 0})
        elif tag == "circle" and "eval-point" in attrs.get("class", ""):
            self.charts[-1]["points"].append((attrs["data-metric"], float(attrs["data-step"]),
                                              float(attrs["data-value"])))
        elif tag == "rect" and attrs.get("class") == "bar":
            self.charts[-1]["bars"].append((attrs["data-name"], attrs["data-value"]))
        elif tag == "polyline" and attrs.get("class") == "train-loss":
            self.charts[-1]["lines"] += 1

    def handle_data(self, data):
        self.text.append(data)


def records(evals: list[int]) -> list[dict]:
    train = [{"kind": "train", "step": s, "loss": 6.0 - s / 100} for s in range(10, 101, 10)]
    return train + [{"kind": "eval", "step": s, "eval_loss": 5.0 - s / 100, "mlm_accuracy": s / 200} for s in evals]


DATA = {
    "title": "plmkit demo",
    "headline": [{"label": "accuracy, pretrained", "value": 0.81}],
    "comparison": {"title": "SST-2 dev accuracy", "bars": [{"name": "pretrained", "value": 0.81},
                                                          {"name": "from scratch", "value": 0.7}]},
    "curves": [{"title": "BERT pretraining", "records": records([25, 50, 100])},
               {"title": "fine-tuning <pretrained>", "records": [{"kind": "eval", "step": 5, "accuracy": 0.6},
                                                                 {"kind": "eval", "step": 10, "accuracy": 0.8}]}],
    "samples": [{"title": "Fill-mask", "items": [{"input": "the film was [MASK] .", "output": "good (0.21)"}]},
                {"title": "Generation", "items": [{"input": "ROMEO:", "output": "ROMEO: <b>not markup</b>"}]}],
    "timings": [{"stage": "tokenizers", "seconds": 12.0}, {"stage": "pretraining", "seconds": 300.0}],
}


def test_report_is_one_self_contained_page(tmp_path):
    path = write_html_report(tmp_path / "report.html", DATA)
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert text.startswith("<!doctype html>")
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "img") or attrs.get("src", "").startswith("data:"), tag
        for key in ("src", "href"):
            assert not attrs.get(key, "").startswith(("http:", "https:", "//")), (tag, attrs)
    assert "url(" not in text and "@import" not in text
    assert "<b>not markup</b>" not in text and "&lt;b&gt;not markup&lt;/b&gt;" in text  # samples are escaped


def test_report_draws_every_eval_point_of_every_curve():
    page = Page(render_html_report(DATA))
    curves = [c for c in page.charts if c["class"] == "curve"]
    assert [c["label"] for c in curves] == ["BERT pretraining", "fine-tuning <pretrained>"]
    bert, finetune = curves
    assert bert["lines"] == 1
    assert sorted(p for p in bert["points"] if p[0] == "eval_loss") == [("eval_loss", 25, 4.75), ("eval_loss", 50, 4.5),
                                                                       ("eval_loss", 100, 4.0)]
    assert sorted(p for p in bert["points"] if p[0] == "mlm_accuracy") == [
        ("mlm_accuracy", 25, 0.125), ("mlm_accuracy", 50, 0.25), ("mlm_accuracy", 100, 0.5)]
    assert finetune["points"] == [("accuracy", 5, 0.6), ("accuracy", 10, 0.8)] and finetune["lines"] == 0


def test_report_shows_the_comparison_samples_and_timings():
    page = Page(render_html_report(DATA))
    bars = next(c for c in page.charts if c["label"] == "SST-2 dev accuracy")
    assert bars["bars"] == [("pretrained", "0.81"), ("from scratch", "0.7")]
    words = " ".join(page.text)
    for expected in ("Fill-mask", "the film was [MASK] .", "good (0.21)", "Generation", "Time per stage",
                     "tokenizers", "12.0 s", "300.0 s", "5.2 min", "0.81", "accuracy, pretrained"):
        assert expected in words, expected
    timing_bars = next(c for c in page.charts if c["label"] == "seconds per stage")
    assert [name for name, _ in timing_bars["bars"]] == ["tokenizers", "pretraining"]


def test_demo_report_data_reads_every_run(tmp_path):
    for name in ("bert", "gpt", "sst2-pretrained", "sst2-from-scratch"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records([50, 100])))
    runs = {"bert": SimpleNamespace(out_dir=tmp_path / "bert"), "gpt": SimpleNamespace(out_dir=tmp_path / "gpt")}
    summary = {"minutes": 9.5, "bert_heldout_mlm_loss": 4.1, "gpt_heldout_perplexity": 80.0}
    data = report_data(tmp_path, runs, {"pretrained": 0.8, "from scratch": 0.7},
                       {"fill-mask": [{"input": "a [MASK]", "output": "b"}], "generation": []},
                       [{"stage": "tokenizers", "seconds": 3.0}], summary)
    page = Page(render_html_report(data))
    curves = [c for c in page.charts if c["class"] == "curve"]
    assert len(curves) == 4 and all(len(c["points"]) == 4 for c in curves)  # 2 evals x (loss, accuracy)
    assert ("pretrained", "0.8") in page.charts[0]["bars"]


def test_demo_samples_ship_as_package_data():
    folder = bundled_data()
    assert folder == REPO / "src" / "plmkit" / "demo_data"
    for name in SAMPLES:
        assert (folder / name).is_file() and (folder / name).stat().st_size > 10_000
    licenses = (folder / "README.md").read_text(encoding="utf-8")
    for name in SAMPLES:  # every shipped sample has its source and license listed
        assert re.search(rf"^\| `{re.escape(name)}` \| .+ \| .+ \| .+ \|$", licenses, flags=re.M), name
    listed = set(re.findall(r"^\| `([^`]+)` \|", licenses, flags=re.M))
    assert listed == {p.name for p in folder.iterdir() if p.name != "README.md"}
    pyproject = (REPO / "pyproject.toml").read_text()
    package_data = pyproject[pyproject.index("[tool.setuptools.package-data]"):]
    assert re.search(r'^plmkit = \[.*"demo_data/\*"', package_data, flags=re.M)
    assert "src/plmkit/demo_data/README.md" in (REPO / "data" / "README.md").read_text()


@pytest.mark.slow
def test_the_wheel_carries_the_samples(tmp_path):
    """`pip install plmkit && plmkit demo` finds its data: the built wheel holds plmkit/demo_data."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    names = zipfile.ZipFile(next((tmp_path / "dist").glob("plmkit-*.whl"))).namelist()
    for sample in (*SAMPLES, "README.md"):
        assert f"plmkit/demo_data/{sample}" in names
