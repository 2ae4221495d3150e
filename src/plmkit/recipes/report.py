"""One self-contained HTML page reporting a workflow (the demo's ``report.html``).

`write_html_report(path, data)` takes plain data, so the steps that produce it can change
without touching this module. Every chart is inline SVG (no scripts, no external assets: the
page opens offline and can be mailed as one file). `data` holds any of:

``title`` (str), ``subtitle`` (str)
``headline``: [{"label": str, "value": number | str}] -- the key numbers, large, at the top
``comparison``: {"title": str, "metric": str, "bars": [{"name": str, "value": number}]} -- a bar chart
``curves``: [{"title": str, "records": [metrics.jsonl records] | "metrics": path}] -- the train
    loss as a line and every evaluation as points (losses on the left axis, scores in [0, 1] on
    the right), as `plmkit.train.metrics_log.curve_series` splits them
``samples``: [{"title": str, "items": [{"input": str, "output": str}]}] -- model outputs
``timings``: [{"stage": str, "seconds": number}] -- a table and a bar per stage
``tables``: [{"title": str, "rows": [[cell, ...]], "header": [str]}]
``notes``: [str]
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plmkit.files import atomic_write_text
from plmkit.train.metrics_log import curve_series, read_metrics

WIDTH, HEIGHT = 720, 300
MARGIN = {"left": 76, "right": 64, "top": 36, "bottom": 44}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_MAX_LINE_POINTS = 1500
_LEGEND_ROW = 17

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 980px; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.subtitle { color: #666; margin-top: 0; }
.headline { display: flex; flex-wrap: wrap; gap: 1em; margin: 1.2em 0; }
.headline div { border: 1px solid #ddd; border-radius: 8px; padding: 0.6em 1em; min-width: 10em; }
.headline .value { font-size: 1.6em; font-weight: 600; display: block; }
.headline .label { color: #555; font-size: 0.9em; }
figure { margin: 1em 0 1.6em; } figcaption { color: #555; font-size: 0.9em; }
svg { max-width: 100%; height: auto; background: #fff; }
svg text { font: 12px system-ui, sans-serif; fill: #333; }
svg .title { font-size: 14px; font-weight: 600; }
svg .grid { stroke: #e5e5e5; } svg .axis { stroke: #888; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; }
td, th { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f6f6f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; margin: 0; font: 13px/1.4 ui-monospace, Menlo, Consolas, monospace; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


# --------------------------------------------------------------------------- charts


def _ticks(low: float, high: float, count: int = 5) -> list[tuple[float, str]]:
    """About `count` round values covering [low, high], each with its label (as many decimals as
    the spacing needs)."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [(low, f"{low:g}")]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    while abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:  # 2.5, 0.25: one more decimal
        decimals += 1
    first = math.ceil(low / step) * step
    values = [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]
    return [(v, f"{v:.{decimals}f}") for v in values]


class _Frame:
    """Maps data coordinates onto the plot area of a chart."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        self.x0, self.x1 = x_range if x_range[1] > x_range[0] else (x_range[0] - 1, x_range[0] + 1)
        self.y0, self.y1 = y_range if y_range[1] > y_range[0] else (y_range[0] - 1, y_range[0] + 1)
        self.left, self.right = MARGIN["left"], WIDTH - MARGIN["right"]
        self.top, self.bottom = MARGIN["top"], HEIGHT - MARGIN["bottom"]

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - (value - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)


def _thin(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most _MAX_LINE_POINTS evenly spaced points (the last kept): a long run's line stays small."""
    if len(points) <= _MAX_LINE_POINTS:
        return list(points)
    stride = math.ceil(len(points) / _MAX_LINE_POINTS)
    return list(points[::stride]) + ([points[-1]] if (len(points) - 1) % stride else [])


def _padded(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
    return low - pad, high + pad


def curve_svg(title: str, records: Sequence[Mapping[str, Any]]) -> str:
    """The training curve of one run as SVG: train loss (line), eval losses (points joined by a line,
    left axis) and eval scores (points, right axis, 0-1). Every evaluation is a <circle
    class="eval-point"> with data-metric, data-step and data-value (and a tooltip)."""
    train, losses, scores = curve_series([dict(r) for r in records])
    if not train and not losses and not scores:
        return f"<p>{_e(title)}: no training or evaluation records.</p>"
    steps = [s for s, _ in train] + [s for pts in (*losses.values(), *scores.values()) for s, _ in pts]
    loss_values = [v for _, v in train] + [v for pts in losses.values() for _, v in pts]
    frame = _Frame((min(steps), max(steps)), _padded(loss_values) if loss_values else (0.0, 1.0))
    right = _Frame((frame.x0, frame.x1), (0.0, 1.0))
    legend: list[tuple[str, str, str]] = []
    height = HEIGHT + _LEGEND_ROW * (len(losses) + len(scores) + (1 if train else 0))  # legend below the plot
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" role="img" '
             f'aria-label="{_e(title)}" class="curve"><title>{_e(title)}</title>',
             f'<text class="title" x="{WIDTH / 2}" y="20" text-anchor="middle">{_e(title)}</text>']
    parts += _axes(frame, "step", "loss" if loss_values else "", right if scores else None)
    if train:
        line = " ".join(f"{frame.x(s):.1f},{frame.y(v):.1f}" for s, v in _thin(train))
        parts.append(f'<polyline class="train-loss" fill="none" stroke="{COLORS[0]}" stroke-width="1.4" '
                     f'points="{line}"/>')
        legend.append(("train loss", COLORS[0], "line"))
    for i, (name, points) in enumerate([*losses.items(), *scores.items()]):
        color = COLORS[(i + 1) % len(COLORS)]
        is_score = name in scores
        target = right if is_score else frame
        line = " ".join(f"{target.x(s):.1f},{target.y(v):.1f}" for s, v in points)
        dash = ' stroke-dasharray="5,3"' if is_score else ""
        parts.append(f'<polyline class="eval-line" fill="none" stroke="{color}" stroke-width="1.2"{dash} '
                     f'points="{line}"/>')
        for step, value in points:
            parts.append(f'<circle class="eval-point" data-metric="{_e(name)}" data-step="{step:g}" '
                         f'data-value="{value:.6g}" cx="{target.x(step):.1f}" cy="{target.y(value):.1f}" r="3.5" '
                         f'fill="{color}"><title>{_e(name)} {value:.4g} at step {step:g}</title></circle>')
        legend.append((f"{name} (eval{', right axis' if is_score else ''})", color, "point"))
    parts += _legend(legend)
    parts.append("</svg>")
    return "".join(parts)


def _axes(frame: _Frame, xlabel: str, ylabel: str, right: _Frame | None) -> list[str]:
    out = [f'<line class="axis" x1="{frame.left}" y1="{frame.bottom}" x2="{frame.right}" y2="{frame.bottom}"/>',
           f'<line class="axis" x1="{frame.left}" y1="{frame.top}" x2="{frame.left}" y2="{frame.bottom}"/>']
    for value, label in _ticks(frame.x0, frame.x1):
        x = frame.x(value)
        out.append(f'<text x="{x:.1f}" y="{frame.bottom + 16}" text-anchor="middle">{label}</text>')
    if ylabel:
        for value, label in _ticks(frame.y0, frame.y1):
            y = frame.y(value)
            out.append(f'<line class="grid" x1="{frame.left}" y1="{y:.1f}" x2="{frame.right}" y2="{y:.1f}"/>')
            out.append(f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        out.append(f'<text x="14" y="{(frame.top + frame.bottom) / 2}" text-anchor="middle" '
                   f'transform="rotate(-90 14 {(frame.top + frame.bottom) / 2})">{_e(ylabel)}</text>')
    if right is not None:
        out.append(f'<line class="axis" x1="{right.right}" y1="{right.top}" x2="{right.right}" y2="{right.bottom}"/>')
        for value, label in _ticks(0.0, 1.0):
            y = right.y(value)
            out.append(f'<text x="{right.right + 6}" y="{y + 4:.1f}">{label}</text>')
        mid = (right.top + right.bottom) / 2
        out.append(f'<text x="{WIDTH - 14}" y="{mid}" text-anchor="middle" transform="rotate(90 {WIDTH - 14} {mid})">'
                   "eval score</text>")
    out.append(f'<text x="{(frame.left + frame.right) / 2}" y="{HEIGHT - 8}" text-anchor="middle">{_e(xlabel)}</text>')
    return out


def _legend(entries: list[tuple[str, str, str]]) -> list[str]:
    """One entry per row, below the plot (it never hides a line)."""
    out, x, y = [], MARGIN["left"], HEIGHT + 2
    for label, color, kind in entries:
        mark = (f'<line x1="{x}" y1="{y}" x2="{x + 16}" y2="{y}" stroke="{color}" stroke-width="2"/>' if kind == "line"
                else f'<circle cx="{x + 8}" cy="{y}" r="3.5" fill="{color}"/>')
        out.append(f'<g class="legend">{mark}<text x="{x + 22}" y="{y + 4}">{_e(label)}</text></g>')
        y += _LEGEND_ROW
    return out


def bars_svg(title: str, bars: Sequence[Mapping[str, Any]], unit: str = "") -> str:
    """A horizontal bar per {"name", "value"}, labelled with its value (class "bar", data-value)."""
    values = [float(b["value"]) for b in bars if isinstance(b.get("value"), (int, float))
              and math.isfinite(float(b["value"]))]
    top = max(values + [1e-12])
    height = 44 + 34 * len(bars)
    label_width, chart_width = 170, WIDTH - 170 - 90
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" role="img" '
             f'aria-label="{_e(title)}" class="bars"><title>{_e(title)}</title>',
             f'<text class="title" x="{WIDTH / 2}" y="20" text-anchor="middle">{_e(title)}</text>']
    for i, bar in enumerate(bars):
        y = 36 + 34 * i
        value = bar.get("value")
        finite = isinstance(value, (int, float)) and math.isfinite(float(value))
        length = chart_width * float(value) / top if finite and top > 0 else 0
        parts.append(f'<text x="{label_width - 8}" y="{y + 17}" text-anchor="end">{_e(bar["name"])}</text>')
        parts.append(f'<rect class="bar" data-name="{_e(bar["name"])}" data-value="{_e(value)}" x="{label_width}" '
                     f'y="{y}" width="{max(length, 0):.1f}" height="24" fill="{COLORS[i % len(COLORS)]}"/>')
        shown = f"{float(value):.3f}{unit}" if finite else "n/a"
        parts.append(f'<text x="{label_width + length + 6:.1f}" y="{y + 17}">{_e(shown)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- the page


def _curve_records(curve: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "records" in curve:
        return [dict(r) for r in curve["records"]]
    return read_metrics(curve["metrics"]) if curve.get("metrics") else []


def render_html_report(data: Mapping[str, Any]) -> str:
    """The page for `data` (see the module docstring)."""
    title = str(data.get("title", "plmkit report"))
    body = [f"<h1>{_e(title)}</h1>"]
    if data.get("subtitle"):
        body.append(f'<p class="subtitle">{_e(data["subtitle"])}</p>')
    if data.get("headline"):
        cells = "".join(f'<div><span class="value">{_e(_number(h["value"]))}</span>'
                        f'<span class="label">{_e(h["label"])}</span></div>' for h in data["headline"])
        body.append(f'<section class="headline">{cells}</section>')
    if data.get("comparison"):
        comparison = data["comparison"]
        body.append(f"<h2>{_e(comparison.get('title', 'Comparison'))}</h2>")
        body.append(f"<figure>{bars_svg(comparison.get('title', ''), comparison['bars'])}"
                    f"<figcaption>{_e(comparison.get('caption', comparison.get('metric', '')))}</figcaption></figure>")
    if data.get("curves"):
        body.append("<h2>Training curves</h2>")
        for curve in data["curves"]:
            records = _curve_records(curve)
            evals = sum(1 for r in records if r.get("kind") == "eval")
            caption = curve.get("caption") or f"{evals} evaluation{'s' if evals != 1 else ''} shown as points"
            body.append(f"<figure>{curve_svg(curve['title'], records)}<figcaption>{_e(caption)}</figcaption></figure>")
    for group in data.get("samples", []):
        rows = "".join(f"<tr><td><pre>{_e(item['input'])}</pre></td><td><pre>{_e(item['output'])}</pre></td></tr>"
                       for item in group["items"])
        body.append(f"<h2>{_e(group['title'])}</h2><table class=\"samples\"><tr><th>input</th><th>output</th></tr>"
                    f"{rows}</table>")
    if data.get("timings"):
        timings = data["timings"]
        total = sum(float(t["seconds"]) for t in timings)
        rows = "".join(f"<tr><td>{_e(t['stage'])}</td><td class=\"num\">{float(t['seconds']):.1f} s</td></tr>"
                       for t in timings)
        body.append(f"<h2>Time per stage</h2><table class=\"timings\"><tr><th>stage</th><th>time</th></tr>{rows}"
                    f"<tr><th>total</th><th class=\"num\">{total / 60:.1f} min</th></tr></table>")
        body.append(bars_svg("seconds per stage", [{"name": t["stage"], "value": float(t["seconds"])} for t in timings],
                             " s"))
    for table in data.get("tables", []):
        header = "".join(f"<th>{_e(h)}</th>" for h in table.get("header", []))
        rows = "".join("<tr>" + "".join(f"<td>{_e(_number(c))}</td>" for c in row) + "</tr>" for row in table["rows"])
        body.append(f"<h2>{_e(table['title'])}</h2><table>{f'<tr>{header}</tr>' if header else ''}{rows}</table>")
    if data.get("notes"):
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in data["notes"]) + "</ul>")
    made = time.strftime("%Y-%m-%d %H:%M")
    body.append(f'<p class="subtitle">Written by plmkit on {made}.</p>')
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{_e(title)}</title><style>{STYLE}</style></head>'
            f"<body>{''.join(body)}</body></html>\n")


def write_html_report(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write the page for `data` to `path` (whole or not at all); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, render_html_report(data))


__all__ = ["bars_svg", "curve_svg", "render_html_report", "write_html_report"]
