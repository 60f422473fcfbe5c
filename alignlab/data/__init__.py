"""Data layer: mirror (pinned public files, fetched on demand) / file / hub sources -> canonical sft, preference or prompt rows.

`load_data(cfg, kind)` reads the source, keeps raw records matching `include`/`exclude`,
parses them (`formats.py`), drops or rejects bad rows (`rows.check_row`), removes duplicates
and over-long rows, splits train/eval by a salted hash of each row's prompt (its first user
turn, normalised: `selection.prompt_key`), keeps one shard of the train rows when asked (another
hash of the prompt: shards never share a prompt; the held-out rows stay whole) and truncates to
the row limits. Every dropped row is counted in `LoadedData.report` and logged on "alignlab.data".
Rows hold only canonical keys, ready for trl trainers.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import DataConfig
from .errors import DataError
from .formats import FORMATS, row_parser
from .mirror import MIRROR, mirror_path, unknown_source
from .readers import Records, read_file, read_hub
from .rows import KINDS, BadRow, Tie, canonical_json, check_row, with_system_prompt
from .store import data_home as resolve_data_home
from .selection import drop_duplicates, drop_long, in_eval, keep_record, shard_of, value_sets

__all__ = ["DataConfig", "DataError", "FORMATS", "LoadedData", "MIRROR", "load_data"]

log = logging.getLogger("alignlab.data")
_FIRST = 10  # row numbers kept per report entry


@dataclass
class LoadedData:
    """Rows of one source. `report` counts every step:

    source, path, format, kind; read (raw records); filtered (records removed by
    include/exclude); parsed (canonical rows); bad, ties, duplicates, too_long: each
    {"count", "rows": first source row numbers, "examples": first problems (bad, ties only)};
    train, eval (final sizes); truncated {"train", "eval"} (rows cut by max_*_rows);
    row_numbering (what a row number means for this source); with a shard, shard {"index",
    "count", "rows": train rows in each shard before max_train_rows}.
    """

    train: list[dict]
    eval: list[dict]
    fingerprint: str  # sha256 of the canonical JSON of [train, eval]
    report: dict


def _step(examples: bool = False) -> dict:
    return {"count": 0, "rows": [], **({"examples": []} if examples else {})}


def _note(step: dict, n: int, example: str | None = None) -> None:
    step["count"] += 1
    if len(step["rows"]) < _FIRST:
        step["rows"].append(n)
    if example is not None and len(step["examples"]) < 3:
        step["examples"].append(example)


def _source(cfg, data_home) -> tuple[str, Callable[[], Records]]:
    """(format, reader) of cfg.source: a mirror name, a file or `hub:owner/name`."""
    source, fmt = str(cfg.source), cfg.format
    if source in MIRROR:
        entry = MIRROR[source]
        if fmt not in (None, entry.format):
            raise DataError(f"mirror dataset '{source}' has format '{entry.format}', not '{fmt}'; "
                            "leave data.format unset")
        path = mirror_path(source, resolve_data_home(data_home))
        return entry.format, lambda: read_file(path)
    if source.startswith("hub:"):
        reader = lambda: read_hub(source[4:], cfg.hub_config, cfg.hub_split)  # noqa: E731
    elif Path(source).expanduser().is_file():
        reader = lambda: read_file(Path(source).expanduser())  # noqa: E731
    else:
        raise unknown_source(source)
    if not fmt:
        raise DataError(f"data source '{source}' needs data.format (one of {', '.join(sorted(FORMATS))})")
    return fmt, reader


def _check_options(cfg, kind: str) -> None:
    if kind not in KINDS:
        raise DataError(f"unknown row kind {kind!r}; expected one of {', '.join(KINDS)}")
    if cfg.ties not in ("drop", "error"):
        raise DataError(f"data.ties must be 'drop' or 'error', got {cfg.ties!r}")
    if cfg.on_bad_row not in ("drop", "error"):
        raise DataError(f"data.on_bad_row must be 'drop' or 'error', got {cfg.on_bad_row!r}")
    if not 0 <= cfg.eval_fraction < 1:
        raise DataError(f"data.eval_fraction must be in [0, 1), got {cfg.eval_fraction}")


def load_data(cfg: DataConfig, kind: str, data_home: str | None = None,
              shard: tuple[int, int] | None = None) -> LoadedData:
    """Train/eval rows of `kind` ("sft", "preference" or "prompt") from the source of `cfg`.

    `cfg` is a DataConfig or a DictConfig with its fields; `data_home` (a read-only mirror)
    overrides $ALIGNLAB_DATA_HOME for mirror names; with neither, they come from the download cache.
    `shard` (i, n): only the train rows of shard i of n (`selection.shard_of`). Raises DataError on
    any problem that is not dropped.
    """
    _check_options(cfg, kind)
    fmt, read = _source(cfg, data_home)
    parse = row_parser(fmt, kind, dict(cfg.columns or {}), cfg.ranked_pairs)
    records = read()
    label = records.label
    report = {"source": str(cfg.source), "path": label, "format": fmt, "kind": kind,
              "row_numbering": records.row_format.format(n="N"), "read": len(records.rows)}

    include, exclude = value_sets(cfg.include), value_sets(cfg.exclude)
    kept = [(n, r) for n, r in records.rows if keep_record(r, include, exclude)]
    report["filtered"] = len(records.rows) - len(kept)
    if not kept:
        raise DataError(f"{label}: no records left after include/exclude "
                        f"({len(records.rows)} read, include={include}, exclude={exclude})")

    rows, bad, ties = [], _step(examples=True), _step(examples=True)
    report.update(parsed=0, bad=bad, ties=ties)

    def reject(n: int, e: BadRow) -> None:
        problem = f"field '{e.field}': {e}"
        if isinstance(e, Tie):
            if cfg.ties == "error":
                raise DataError(f"{records.where(n)}: {problem}; set data.ties=drop to skip ties")
            _note(ties, n, f"row {n}: {problem}")
        elif cfg.on_bad_row == "error":
            raise DataError(f"{records.where(n)}: {problem}; set data.on_bad_row=drop to skip bad rows")
        else:
            _note(bad, n, f"row {n}: {problem}")

    for n, record in kept:
        try:
            parsed = parse(record)
        except BadRow as e:
            reject(n, e)
            continue
        report["parsed"] += len(parsed)
        for row in parsed:
            row = with_system_prompt(row, cfg.system_prompt)
            try:
                check_row(row, kind, int(cfg.min_chars))
            except BadRow as e:
                reject(n, e)
                continue
            rows.append((n, row))
    if not rows:
        raise DataError(f"{label}: no valid '{kind}' rows after parsing ({report['parsed']} parsed, "
                        f"{bad['count']} bad, {ties['count']} ties; first problems: "
                        f"{bad['examples'] + ties['examples']})")

    report["duplicates"], report["too_long"] = _step(), _step()
    if cfg.dedup:
        rows, repeats = drop_duplicates(rows)
        for n in repeats:
            _note(report["duplicates"], n)
    if cfg.max_chars is not None:
        rows, long_rows = drop_long(rows, int(cfg.max_chars))
        for n in long_rows:
            _note(report["too_long"], n)
        if not rows:
            raise DataError(f"{label}: no rows left after max_chars={cfg.max_chars}")

    held_out = [in_eval(row, cfg.eval_fraction, cfg.split_seed) for _, row in rows]
    train = [row for (_, row), held in zip(rows, held_out) if not held]
    eval_ = [row for (_, row), held in zip(rows, held_out) if held]
    if not train:
        raise DataError(f"{label}: no train rows after the split ({len(rows)} rows, "
                        f"eval_fraction={cfg.eval_fraction})")
    if shard is not None:
        index, count = shard
        shards = [shard_of(row, count, cfg.split_seed) for row in train]
        report["shard"] = {"index": index, "count": count, "rows": [shards.count(i) for i in range(1, count + 1)]}
        train = [row for row, s in zip(train, shards) if s == index]
        if not train:
            raise DataError(f"{label}: no train rows in shard {index}/{count} ({len(shards)} train rows)")
    report["truncated"] = {"train": 0, "eval": 0}
    for name, limit in (("train", cfg.max_train_rows), ("eval", cfg.max_eval_rows)):
        part = train if name == "train" else eval_
        if limit is not None and len(part) > limit:
            report["truncated"][name] = len(part) - limit
            del part[limit:]
    report["train"], report["eval"] = len(train), len(eval_)

    for step in ("bad", "ties", "duplicates", "too_long"):
        if report[step]["count"]:
            log.warning("%s: dropped %d row(s) as %s, first rows %s%s", label, report[step]["count"],
                        step, report[step]["rows"],
                        f": {report[step]['examples'][0]}" if report[step].get("examples") else "")
    log.info("%s: %d read, %d filtered, %d train, %d eval", label, report["read"], report["filtered"],
             len(train), len(eval_))
    fingerprint = hashlib.sha256(canonical_json([train, eval_]).encode()).hexdigest()
    return LoadedData(train=train, eval=eval_, fingerprint=fingerprint, report=report)
