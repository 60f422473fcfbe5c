"""Raw records from JSON / JSONL / CSV files (optionally .gz / .bz2) and hub datasets."""
from __future__ import annotations

import bz2
import csv
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .mirror import MIRROR


@dataclass
class Records:
    """Raw records of one source, each with its 1-based row number."""

    label: str  # file path or hub id, used in messages
    row_format: str  # how a row number reads in messages, e.g. "row {n} (line {n})"
    rows: list[tuple[int, dict]]

    def where(self, n: int) -> str:
        return f"{self.label}: " + self.row_format.format(n=n)


def _open_text(path: Path):
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8-sig", newline="")


def _check_object(path: Path, where: str, record) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    return record


def read_file(path: Path) -> Records:
    """Records of a .json (list of objects), .jsonl or .csv file, optionally compressed."""
    kind = Path(path.stem).suffix if path.suffix in (".gz", ".bz2") else path.suffix
    if kind == ".jsonl":
        rows = []
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {n}: malformed JSON: {e}") from None
                rows.append((n, _check_object(path, f"line {n}", record)))
        return Records(str(path), "row {n} (line {n})", rows)
    if kind == ".json":
        with _open_text(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: malformed JSON: {e}") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        rows = [(n, _check_object(path, f"list item {n}", r)) for n, r in enumerate(data, 1)]
        return Records(str(path), "row {n} (JSON list item {n})", rows)
    if kind == ".csv":
        with _open_text(path) as f:
            rows = list(enumerate(csv.DictReader(f), 1))
        return Records(str(path), "row {n} (CSV data row {n}, header not counted)", rows)
    raise DataError(f"{path}: unsupported file type '{kind}' (use .json, .jsonl or .csv, optionally .gz/.bz2)")


def _offline_env() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def read_hub(name: str, config: str | None, split: str) -> Records:
    """Records of `datasets.load_dataset(name, config, split=split)`."""
    import datasets

    label = f"hub:{name}"
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - every failure becomes one clear DataError
        if _offline_env() or isinstance(e, ConnectionError):
            raise DataError(
                f"{label}: the Hugging Face hub is unreachable or offline (HF_HUB_OFFLINE="
                f"{os.environ.get('HF_HUB_OFFLINE', '')!r}) and dataset '{name}' is not in the local cache "
                f"({type(e).__name__}: {e}); use a local file or a mirror name "
                f"({', '.join(sorted(MIRROR))})") from e
        raise DataError(f"{label} (config {config!r}, split {split!r}) could not be loaded: "
                        f"{type(e).__name__}: {e}") from e
    return Records(label, f"row {{n}} (of split '{split}')", [(n, dict(r)) for n, r in enumerate(ds, 1)])
