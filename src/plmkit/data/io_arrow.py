"""Columnar inputs of `plmkit.data.io`: Parquet files and Hugging Face `datasets` folders.

- ``.parquet``: read in record batches (a file larger than memory streams through).
- a folder written by ``Dataset.save_to_disk`` (``state.json`` + ``data-*.arrow``, Arrow IPC
  streams) or a single ``.arrow`` file. A ``DatasetDict`` folder (``dataset_dict.json``) holds
  one folder per split: name the split's folder (``data/sst2/train``).

Both are read with `pyarrow` (``pip install 'plmkit[parquet]'``); the `datasets` library itself is
not needed. Files that ``datasets.load_dataset`` reads locally (csv, json/jsonl, text, parquet)
are read by `plmkit.data.io` directly. Records are numbered from 1 in file order: the number a
`plmkit.errors.DataError` names after the path (``train.parquet:17``) is the row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from plmkit.errors import DataError
from plmkit.extras import require

COLUMNAR_FORMATS = ("parquet", "arrow")
_BATCH_ROWS = 1024


def is_dataset_folder(path: str | Path) -> bool:
    """Whether `path` is a folder ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``) wrote."""
    folder = Path(path)
    return folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file())


def columnar_format(path: str | Path) -> str | None:
    """"parquet" for a .parquet file, "arrow" for a datasets folder or an .arrow file, else None."""
    path = Path(path)
    if is_dataset_folder(path):
        return "arrow"
    suffix = path.suffix.lower()
    return {".parquet": "parquet", ".arrow": "arrow"}.get(suffix) if path.is_file() else None


def _arrow_files(path: Path) -> list[Path]:
    """The Arrow files of a datasets folder (in state.json's order), or the file itself."""
    if path.is_file():
        return [path]
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        except (OSError, ValueError, AttributeError):
            splits = []
        names = ", ".join(map(str, splits)) or "none listed"
        example = path / str((splits or ["train"])[0])
        raise DataError(path, None, f"a DatasetDict folder: name one of its splits, e.g. {example} (splits: {names})")
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        files = [path / str(entry["filename"]) for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(path / "state.json", None, f"not a datasets state file: {e}") from None
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(missing[0], None, "missing: state.json lists it but the folder lacks it")
    return files


def _batches(path: Path, fmt: str, columns: Sequence[str] | None) -> Iterator[Any]:
    """pyarrow RecordBatches of a parquet file or of every Arrow file of a datasets folder."""
    pa = require("pyarrow", "parquet", f"reading {path.name}")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            yield from pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS, columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise DataError(path, None, f"not a readable Parquet file: {e}") from None
        return
    for file in _arrow_files(path):
        try:
            reader = _open_arrow(pa, file)
            for batch in reader:
                yield batch.select(list(columns)) if columns is not None else batch
        except (pa.ArrowException, OSError) as e:
            raise DataError(file, None, f"not a readable Arrow file: {e}") from None


def _open_arrow(pa: Any, file: Path) -> Any:
    """An Arrow IPC stream (what datasets writes), else an Arrow IPC file."""
    source = pa.memory_map(str(file))
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        return pa.ipc.open_file(source)


def columnar_names(path: str | Path, fmt: str) -> list[str]:
    """The column names of a parquet file or datasets folder."""
    pa = require("pyarrow", "parquet", f"reading {Path(path).name}")
    path = Path(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return list(_open_arrow(pa, _arrow_files(path)[0]).schema.names)
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, None, f"not a readable {'Parquet' if fmt == 'parquet' else 'Arrow'} file: {e}") from None


def columnar_records(path: str | Path, fmt: str, columns: Sequence[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(row number from 1, {column: value}) of each row; only `columns` when given."""
    row = 0
    for batch in _batches(Path(path), fmt, columns):
        for record in batch.to_pylist():
            row += 1
            yield row, record


__all__ = ["COLUMNAR_FORMATS", "columnar_format", "columnar_names", "columnar_records", "is_dataset_folder"]
