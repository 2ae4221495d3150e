"""Where training numbers go: ``metrics.jsonl`` (always), TensorBoard (when installed), a loss plot.

Each line of metrics.jsonl is one JSON record with a "kind" ("train" or "eval") and a
"step"; train records carry loss, lr, grad_norm, tokens and throughput, eval records the
metrics returned by the evaluation function.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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

    A disabled log (non-zero ranks) accepts calls and writes nothing.
    """

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(out_dir) / METRICS_FILE
        self.enabled = enabled
        self._file = None
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tb = _tensorboard_writer(self.path.parent / "tensorboard") if tensorboard else None

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


def _tensorboard_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(log_dir))


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path) -> Path | None:
    """Draw train loss (and eval loss, when logged) against step into a PNG; None without data."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and _finite(r.get("loss"))]
    evals = [(r["step"], r["loss"]) for r in records if r.get("kind") == "eval" and _finite(r.get("loss"))]
    if not train and not evals:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)  # draw off-screen without touching pyplot's global backend
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return atomic_write(Path(png_path), lambda tmp: fig.savefig(tmp, format="png"))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
