"""The model card (README.md, Hugging Face style) written into a run's final/ and best/ folders.

The card is built from what the run folder already records (`plmkit.rundir`): run.json (the
plan, the command lines, the input files with their sizes and hashes, versions), metrics.jsonl
(the evaluations), finetune.json (the task, its config and, in best/, the best dev score) and
dev_eval.json (the best model's dev report). Its YAML front matter carries the Hub's fields
(library_name, pipeline_tag, tags, model-index with the results); the body says what the model
is for, what it was trained and evaluated on, how it was trained, how to use it and its limits.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from plmkit.files import atomic_write_text
from plmkit.heads import pipeline_task
from plmkit.rundir import BEST_DIR, BEST_RECORD, CONFIG_FILE, DEV_REPORT, METRICS_FILE, RUN_FILE, read_recipe, run_of
from plmkit.version import __version__

CARD_FILE = "README.md"


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _last_eval(run: Path) -> dict[str, float]:
    """The metrics of the run's last evaluation (metrics.jsonl), without "kind" and "step"."""
    last: dict[str, Any] = {}
    try:
        lines = (run / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("kind") == "eval":
            last = record
    return {k: v for k, v in last.items() if k not in ("kind", "step") and isinstance(v, (int, float))}


def card_facts(model_folder: str | Path) -> dict[str, Any]:
    """Everything the card says, as plain data (read from the model folder and its run)."""
    folder = Path(model_folder)
    run = run_of(folder)
    record = _json(run / RUN_FILE)
    config = _json(folder / CONFIG_FILE)
    recipe = read_recipe(folder) or {}
    plmkit_section = config.get("plmkit", {}) if isinstance(config.get("plmkit"), dict) else {}
    model_record = record.get("model") or {}
    model_config = model_record.get("config") or {}
    head = model_record.get("task") or plmkit_section.get("task")
    arch = model_config.get("arch")
    task = recipe.get("task")
    try:
        pipeline = pipeline_task(recipe=task) if task else pipeline_task(head=head, arch=arch)
    except ValueError:
        pipeline = None
    is_best = folder.name == BEST_DIR
    dev_report = _json(run / f"{DEV_REPORT}.json") if is_best else {}
    best = _json(folder / BEST_RECORD) if is_best else {}
    metrics = dict(dev_report.get("metrics") or {}) or dict(best.get("metrics") or {}) or _last_eval(run)
    return {
        "name": run.resolve().name, "folder": folder.name, "task": task, "head": head, "pipeline": pipeline,
        "model_type": config.get("model_type"), "family": model_config.get("family"),
        "parameters": model_record.get("parameters"), "plan": record.get("plan") or {},
        "commands": [c.get("argv") for c in record.get("commands", []) if isinstance(c, dict)] or
                    ([record["command"]] if record.get("command") else []),
        "inputs": record.get("inputs") or [], "versions": record.get("versions") or {},
        "git": record.get("git") or {}, "config": recipe.get("config") or {}, "best": recipe.get("best") or best or None,
        "metrics": metrics, "metrics_source": "dev file" if task else "held-out shards",
        "labels": list((config.get("id2label") or {}).values())
        if head in ("sequence-classification", "token-classification") else [],
    }


def front_matter(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The YAML header of the card (the Hugging Face Hub's model-card fields)."""
    meta: dict[str, Any] = {"library_name": "plmkit"}
    if facts["pipeline"]:
        meta["pipeline_tag"] = facts["pipeline"]
    meta["tags"] = [t for t in ("plmkit", facts["family"], facts["task"] or "pretraining") if t]
    if facts["metrics"]:
        dataset = _data_name(facts)
        meta["model-index"] = [{"name": facts["name"], "results": [{
            "task": {"type": facts["pipeline"] or "other"},
            "dataset": {"name": dataset, "type": "local"},
            "metrics": [{"type": k, "value": round(float(v), 6), "name": f"{facts['metrics_source']} {k}"}
                        for k, v in facts["metrics"].items()],
        }]}]
    return meta


def _data_name(facts: Mapping[str, Any]) -> str:
    config = facts["config"]
    if config.get("dev_file"):
        return Path(config["dev_file"]).name
    inputs = [Path(i["path"]).name for i in facts["inputs"] if isinstance(i, dict) and i.get("path")]
    return inputs[0] if inputs else "unknown"


def render_card(facts: Mapping[str, Any]) -> str:
    """The whole card: YAML front matter, then Markdown."""
    header = yaml.safe_dump(front_matter(facts), sort_keys=False, allow_unicode=True).strip()
    parts = [f"---\n{header}\n---", f"# {facts['name']} ({facts['folder']})", _summary(facts)]
    parts += [_section(title, body) for title, body in (
        ("Task", _task(facts)), ("Data", _data(facts)), ("Training", _training(facts)), ("Results", _results(facts)),
        ("How to use", _usage(facts)), ("Command", _commands(facts)), ("Limits", _limits(facts))) if body]
    return "\n\n".join(parts) + "\n"


def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body}"


def _summary(facts: Mapping[str, Any]) -> str:
    size = f"{facts['parameters']:,} parameters" if facts["parameters"] else "a model"
    what = f"fine-tuned for {facts['task']}" if facts["task"] else f"pretrained ({facts['head'] or 'pretraining'} head)"
    family = facts["family"] or facts["model_type"] or "Transformer"
    return f"A {family} model ({size}) {what} with plmkit {facts['versions'].get('plmkit', __version__)}."


def _task(facts: Mapping[str, Any]) -> str:
    lines = [f"- pipeline: `{facts['pipeline']}`" if facts["pipeline"] else "- pipeline: none"]
    if facts["labels"]:
        lines.append(f"- labels (in class-id order): {', '.join(map(str, facts['labels']))}")
    return "\n".join(lines)


def _data(facts: Mapping[str, Any]) -> str:
    rows = ["| input | size (bytes) | SHA-256 |", "|---|---|---|"]
    for entry in facts["inputs"]:
        if not isinstance(entry, dict):
            continue
        digest = entry.get("sha256") or entry.get("meta_sha256") or ("(missing)" if entry.get("missing") else "")
        rows.append(f"| `{entry.get('path')}` | {entry.get('size', '')} | {str(digest)[:16]} |")
    plan = facts["plan"]
    counts = f"{plan['examples']:,} training examples" if plan.get("examples") else ""
    text = "\n".join(rows) if len(rows) > 2 else "The run recorded no input files."
    return f"{counts}\n\n{text}".strip()


def _training(facts: Mapping[str, Any]) -> str:
    plan = facts["plan"]
    if not plan:
        return ""
    batch = plan.get("batch", {})
    lines = [f"- steps: {plan.get('steps')}" + (f" ({plan['epochs']:.3g} epochs)" if plan.get("epochs") else ""),
             f"- batch: {batch.get('per_device')} per device x {batch.get('grad_accum')} accumulation x "
             f"{batch.get('processes')} process(es) = {batch.get('examples_per_step')} examples per step",
             f"- learning rate: {plan.get('lr')} ({plan.get('schedule')}, warmup {plan.get('warmup_steps')} steps)",
             f"- precision: {plan.get('precision')}, device: {plan.get('device')}"]
    lines += [f"- {key}: {value}" for key, value in (plan.get("info") or {}).items()]
    return "\n".join(lines)


def _results(facts: Mapping[str, Any]) -> str:
    if not facts["metrics"]:
        return "No evaluation was recorded."
    rows = ["| metric | value |", "|---|---|"] + [f"| {k} | {float(v):.4f} |" for k, v in facts["metrics"].items()]
    best = facts["best"]
    where = "dev" if facts["task"] else "held-out"
    note = (f"The best {where} {best['metric']} was reached at step {best['step']}; these are the scores of this model "
            f"on the {facts['metrics_source']}." if isinstance(best, dict) and best.get("step") is not None
            else f"Scores of the last evaluation on the {facts['metrics_source']}.")
    return note + "\n\n" + "\n".join(rows)


def _usage(facts: Mapping[str, Any]) -> str:
    folder = f"{facts['name']}/{facts['folder']}"
    lines = ["```python", "import plmkit", ""]
    if facts["pipeline"]:
        lines.append(f'pipe = plmkit.pipeline("{facts["pipeline"]}", "{folder}")')
    else:
        lines.append(f'model = plmkit.load("{folder}")')
    lines.append("```")
    if facts["model_type"] and not str(facts["model_type"]).startswith("plmkit"):
        lines += ["", f"The folder also loads in `transformers` (model type `{facts['model_type']}`), e.g. "
                      f"`AutoModel.from_pretrained(\"{folder}\")`."]
    return "\n".join(lines)


def _commands(facts: Mapping[str, Any]) -> str:
    commands = [c for c in facts["commands"] if isinstance(c, list)]
    if not commands:
        return ""
    text = "\n".join(shlex.join(str(a) for a in argv) for argv in commands)
    note = "" if len(commands) == 1 else \
        "\n\nThe run was resumed: each command line that started or continued it is listed."
    source = facts["git"].get("plmkit") or {}
    commit = f"\n\nplmkit source: commit {source['commit']}{' (with local changes)' if source.get('dirty') else ''}." \
        if source.get("commit") else ""
    return f"```\n{text}\n```{note}{commit}"


def _limits(facts: Mapping[str, Any]) -> str:
    plan, config = facts["plan"], facts["config"]
    lines = []
    if plan.get("examples"):
        lines.append(f"- Trained on {plan['examples']:,} examples only; it knows nothing beyond that data.")
    if facts["metrics"]:
        lines.append(f"- Scored only on the {facts['metrics_source']} listed above; expect lower scores on text "
                     "unlike the training data.")
    if config.get("max_length"):
        lines.append(f"- Inputs are cut to {config['max_length']} tokens.")
    lines.append("- Not assessed for bias, toxicity or safety; do not use it for decisions about people.")
    if facts["pipeline"] in ("text-generation", "summarization", "translation"):
        lines.append("- Generated text can be fluent and wrong.")
    return "\n".join(lines)


def write_model_card(model_folder: str | Path) -> Path:
    """Write MODEL_FOLDER/README.md from the run's records; returns its path."""
    folder = Path(model_folder)
    return atomic_write_text(folder / CARD_FILE, render_card(card_facts(folder)))


__all__ = ["CARD_FILE", "card_facts", "front_matter", "render_card", "write_model_card"]
