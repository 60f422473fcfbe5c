"""Record filters, deduplication, length limit and the deterministic split by prompt."""
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


def prompt_key(row: dict) -> str:
    """A row's normalised prompt: its first user turn, whitespace folded and casefolded.

    The same for every row kind (sft, preference, prompt), so rows of any dataset that share a
    prompt share a key.
    """
    conversation = row["messages"] if "messages" in row else row["prompt"]
    first = next(m["content"] for m in conversation if m["role"] == "user")
    return " ".join(first.split()).casefold()


def in_eval(row: dict, eval_fraction: float, split_seed: int) -> bool:
    """A row is held out iff the salted hash of its `prompt_key` falls below `eval_fraction`:
    rows sharing a prompt land on the same side, in every dataset split with the same seed."""
    digest = hashlib.sha256(f"{split_seed}:{prompt_key(row)}".encode()).hexdigest()
    return int(digest, 16) / 2**256 < eval_fraction


def parse_shard(spec: str) -> tuple[int, int]:
    """`"i/n"` (shard i of n, 1 <= i <= n) as (i, n); ValueError naming the expected form."""
    index, sep, count = str(spec).partition("/")
    if sep and index.strip().isdigit() and count.strip().isdigit() and 1 <= int(index) <= int(count):
        return int(index), int(count)
    raise ValueError(f"'{spec}' is not 'i/n' with 1 <= i <= n (e.g. '1/2': the first of two shards)")


def shard_of(row: dict, count: int, split_seed: int) -> int:
    """The shard (1..count) of a row: a salted hash of its `prompt_key`, independent of the eval
    split's, so rows sharing a prompt land in the same shard and shards never share a prompt."""
    digest = hashlib.sha256(f"shard:{split_seed}:{prompt_key(row)}".encode()).hexdigest()
    return int(digest, 16) % count + 1


def overlap(held_out: list[dict], trained: list[list[dict]]) -> int:
    """How many distinct prompts of `held_out` rows are prompts of rows in any of the `trained` lists."""
    seen = {prompt_key(row) for rows in trained for row in rows}
    return len({prompt_key(row) for row in held_out} & seen)


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
