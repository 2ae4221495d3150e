"""Where training numbers go: ``metrics.jsonl`` (always), TensorBoard (the ``tensorboard`` extra),
and the loss plot.

Each line of metrics.jsonl is one JSON record with a "kind" ("train" or "eval") and a
"step"; train records carry loss, lr, grad_norm, tokens and throughput, eval records the
metrics returned by the evaluation function (pretraining: eval_loss, mlm_accuracy, ...;
classification: accuracy, macro_f1, ...).

`plot_loss_curve` draws the train loss and every eval metric at its evaluation steps: losses
on the loss axis, scores (accuracy, F1, ... in [0, 1]) on a second axis, titled with the run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from plmkit.extras import MissingExtraError
from plmkit.files import atomic_write, atomic_write_text
from plmkit.rundir import METRICS_FILE


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file (optionally only those of one kind); [] when absent."""
    file = Path(path)
    if file.is_dir():
        file = file / METRICS_FILE
    if not file.is_file():
        return []
    records = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}:{number}: not a JSON record ({e.msg})") from None
        if kind is None or record.get("kind") == kind:
            records.append(record)
    return records


class MetricsLog:
    """Appends records to out_dir/metrics.jsonl and mirrors numbers to TensorBoard.

    A disabled log (non-zero ranks) accepts calls and writes nothing. `tensorboard`: True
    requires the package (a MissingExtraError naming ``plmkit[tensorboard]`` when it is missing),
    None uses it when installed, False never.
    """

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool | None = None) -> None:
        self.path = Path(out_dir) / METRICS_FILE
        self.enabled = enabled
        self._file = None
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard is not False:
                self._tb = _tensorboard_writer(self.path.parent / "tensorboard", required=bool(tensorboard))

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (written by a run that crashed after its last checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must have "kind" and "step")."""
        if not self.enabled:
            return
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _tensorboard_writer(log_dir: Path, required: bool) -> Any:
    try:
        import tensorboard  # noqa: F401  (torch's SummaryWriter needs it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if required:
            raise MissingExtraError("tensorboard", "tensorboard", "train.tensorboard=true (TensorBoard logging)")
        return None
    return SummaryWriter(log_dir=str(log_dir))


Series = dict[str, list[tuple[float, float]]]
"""Metric name -> (step, value) points."""


def curve_series(records: list[dict[str, Any]]) -> tuple[list[tuple[float, float]], Series, Series]:
    """(train loss points, eval losses, eval scores) of metrics.jsonl records.

    An eval metric whose name ends in "loss" is a loss. A perplexity (a name with "ppl" or
    "perplexity") restates a loss: it is a loss series only when no loss is logged. Any other
    metric is a score: in [0, 1] as logged (accuracy, F1, ROUGE), or on a 0-100 scale (BLEU, chrF,
    SQuAD EM/F1) divided by 100 and named "NAME /100". A metric outside both ranges is left out."""
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and _finite(r.get("loss"))]
    points: Series = {}
    for r in records:
        if r.get("kind") != "eval":
            continue
        for key, value in r.items():
            if key not in ("kind", "step") and _finite(value):
                points.setdefault(key, []).append((r["step"], float(value)))
    losses = {k: v for k, v in points.items() if k.endswith("loss")}
    perplexities = {k: v for k, v in points.items() if k not in losses and ("ppl" in k or "perplexity" in k)}
    if not losses:
        losses = perplexities
    scores: Series = {}
    for name, values in points.items():
        if name in losses or name in perplexities:
            continue
        if all(0.0 <= y <= 1.0 for _, y in values):
            scores[name] = values
        elif all(0.0 <= y <= 100.0 for _, y in values):
            scores[f"{name} /100"] = [(s, y / 100.0) for s, y in values]
    return train, losses, scores


def loss_figure(records: list[dict[str, Any]], title: str) -> Any:
    """The matplotlib Figure of `plot_loss_curve` (None without data): train loss as a line, each eval
    metric as points at its evaluation steps (losses on the left axis, scores on the right)."""
    train, losses, scores = curve_series(records)
    if not train and not losses and not scores:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), dpi=100)
    FigureCanvasAgg(fig)  # draw off-screen without touching pyplot's global backend
    ax = fig.add_subplot()
    handles = []
    if train:
        handles += ax.plot(*zip(*train), label="train loss", linewidth=1.2, color="C0")
    for i, (name, points) in enumerate(losses.items()):
        handles += ax.plot(*zip(*points), "o-", label=_eval_label(name), linewidth=1.2, markersize=5, color=f"C{i + 1}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if scores:
        right = ax.twinx()
        for i, (name, points) in enumerate(scores.items()):
            handles += right.plot(*zip(*points), "s--", label=_eval_label(name), linewidth=1.0, markersize=5,
                                  color=f"C{len(losses) + i + 1}")
        right.set_ylabel("eval score")
        right.set_ylim(0.0, 1.0)
    ax.set_title(title)
    ax.legend(handles=handles, loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def _eval_label(name: str) -> str:
    return name.replace("_", " ") if name.startswith("eval") else f"eval {name.replace('_', ' ')}"


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, title: str | None = None) -> Path | None:
    """Draw the train loss and the eval metrics against step into a PNG (see `loss_figure`); None
    without data. The title names the run (default: the metrics file's folder)."""
    records = read_metrics(metrics_path)
    folder = Path(metrics_path) if Path(metrics_path).is_dir() else Path(metrics_path).parent
    fig = loss_figure(records, title or f"{folder.resolve().name}: training")
    if fig is None:
        return None
    return atomic_write(Path(png_path), lambda tmp: fig.savefig(tmp, format="png"))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
