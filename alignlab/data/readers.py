"""Raw records from JSON / JSONL / CSV files (optionally .gz / .bz2) and hub datasets."""
from __future__ import annotations

import bz2
import csv
import gzip
import io
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


def _check_object(path: Path, where: str, record) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    return record


def _raw_bytes(path: Path) -> bytes:
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    try:
        with opener(path, "rb") as f:
            return f.read()
    except OSError as e:  # not gzip / bz2 data behind that suffix
        raise DataError(f"{path}: cannot read it as a {path.suffix} file: {e}") from None


def _text(path: Path) -> str:
    """The file's text (decompressed, BOM removed); a binary or non-UTF-8 file is a DataError with the byte offset."""
    data = _raw_bytes(path)
    if b"\x00" in data[:65536]:
        raise DataError(f"{path}: is a binary file (NUL byte at offset {data.index(0)}), not JSON, JSONL or CSV text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        raise DataError(f"{path}: is not UTF-8 text (byte 0x{data[offset]:02x} at byte offset {offset}); "
                        "the file must be UTF-8") from None


def read_file(path: Path) -> Records:
    """Records of a .json (list of objects), .jsonl or .csv file, optionally compressed."""
    kind = Path(path.stem).suffix if path.suffix in (".gz", ".bz2") else path.suffix
    if kind not in (".jsonl", ".json", ".csv"):
        raise DataError(f"{path}: unsupported file type '{kind}' (use .json, .jsonl or .csv, optionally .gz/.bz2)")
    text = _text(path)
    if kind == ".jsonl":
        rows = []
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n}: malformed JSON: {e}") from None
            rows.append((n, _check_object(path, f"line {n}", record)))
        return Records(str(path), "row {n} (line {n})", rows)
    if kind == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: malformed JSON: {e}") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        rows = [(n, _check_object(path, f"list item {n}", r)) for n, r in enumerate(data, 1)]
        return Records(str(path), "row {n} (JSON list item {n})", rows)
    rows = list(enumerate(csv.DictReader(io.StringIO(text, newline="")), 1))
    return Records(str(path), "row {n} (CSV data row {n}, header not counted)", rows)


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
