"""Record filters, deduplication, length limit and the deterministic hash split."""
from __future__ import annotations

import hashlib

from .rows import canonical_json, text_length


def value_sets(spec) -> dict[str, set[str]]:
    """DataConfig.include/exclude as {field: set of values as strings} (a scalar is one value)."""
    return {str(k): {str(v) for v in ([vals] if isinstance(vals, (str, int, float)) else vals)}
            for k, vals in dict(spec or {}).items()}


def keep_record(record: dict, include: dict[str, set[str]], exclude: dict[str, set[str]]) -> bool:
    """True if every include field's value is listed and no exclude field's value is."""
    return (all(k in record and str(record[k]) in vals for k, vals in include.items())
            and not any(k in record and str(record[k]) in vals for k, vals in exclude.items()))


def in_eval(row: dict, eval_fraction: float, split_seed: int) -> bool:
    """A row is held out iff its salted hash falls below `eval_fraction` (independent of other rows)."""
    digest = hashlib.sha256(f"{split_seed}:{canonical_json(row)}".encode()).hexdigest()
    return int(digest, 16) / 2**256 < eval_fraction


def drop_duplicates(rows: list[tuple[int, dict]]) -> tuple[list, list[int]]:
    """(first occurrences, row numbers of the repeats)."""
    seen, kept, repeats = set(), [], []
    for n, row in rows:
        key = canonical_json(row)
        if key in seen:
            repeats.append(n)
        else:
            seen.add(key)
            kept.append((n, row))
    return kept, repeats


def drop_long(rows: list[tuple[int, dict]], max_chars: int) -> tuple[list, list[int]]:
    """(rows with at most `max_chars` characters of text, row numbers of the others)."""
    kept = [(n, row) for n, row in rows if text_length(row) <= max_chars]
    return kept, [n for n, row in rows if text_length(row) > max_chars]
