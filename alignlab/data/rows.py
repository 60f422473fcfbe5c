"""Canonical rows: identity, size, system prompt and validity checks.

Kinds: `sft` {"messages": [...]} ending with an assistant turn; `preference`
{"prompt": [... user], "chosen": [assistant], "rejected": [assistant]}; `prompt`
{"prompt": [... user]}, optionally with `reference` (the reference answer a verifiable reward
compares a response with, e.g. GSM8K's solution ending in `#### N`). Messages are {"role": system|user|assistant, "content": str}: an
optional leading system message, then user and assistant turns alternating.
"""
from __future__ import annotations

import json

KINDS = ("sft", "preference", "prompt")


class BadRow(Exception):
    """A record or row that cannot be used; `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Tie(BadRow):
    """A preference record without a winner (handled by `DataConfig.ties`)."""


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def text_length(row: dict) -> int:
    """Characters of all message contents of a row (a reference answer not counted)."""
    return sum(len(m["content"]) for key, messages in row.items() if key != "reference" for m in messages)


def with_system_prompt(row: dict, system_prompt: str | None) -> dict:
    """The row with `system_prompt` prepended to its conversation unless it has a system message."""
    key = "messages" if "messages" in row else "prompt"
    if not system_prompt or row[key][:1] and row[key][0]["role"] == "system":
        return row
    return {**row, key: [{"role": "system", "content": system_prompt}] + row[key]}


def to_prompt(row: dict) -> dict:
    """Prompt row of an sft row (final assistant turn dropped) or a preference row."""
    if "prompt" in row:
        return {k: row[k] for k in ("prompt", "reference") if k in row}
    messages = row["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise BadRow("messages", "does not end with an assistant turn")
    return {"prompt": messages[:-1]}


def _check_content(message: dict, at: str, min_chars: int) -> None:
    content = message["content"]
    if not isinstance(content, str):
        raise BadRow(f"{at}.content", f"expected a string, got {type(content).__name__}")
    if len(content.strip()) < min_chars:
        raise BadRow(f"{at}.content", f"empty {message['role']} message ({len(content.strip())} chars "
                                      f"< min_chars={min_chars})")


def _check_conversation(messages: list, field: str, last: str, min_chars: int) -> None:
    if not messages:
        raise BadRow(field, "no messages")
    start = 1 if messages[0]["role"] == "system" else 0
    for i, message in enumerate(messages):
        expected = "system" if i < start else ("user", "assistant")[(i - start) % 2]
        if message["role"] != expected:
            raise BadRow(f"{field}[{i}].role", f"expected {expected!r}, got {message['role']!r} (an "
                                               "optional system message, then alternating user/assistant)")
        _check_content(message, f"{field}[{i}]", min_chars)
    if messages[-1]["role"] != last:
        raise BadRow(field, f"does not end with a {last} turn")


def check_row(row: dict, kind: str, min_chars: int) -> None:
    """Raise BadRow if the row is not a usable row of `kind`."""
    if kind == "sft":
        _check_conversation(row["messages"], "messages", "assistant", min_chars)
        return
    _check_conversation(row["prompt"], "prompt", "user", min_chars)
    if kind == "prompt" and "reference" in row and not (isinstance(row["reference"], str) and row["reference"].strip()):
        raise BadRow("reference", "expected a non-empty string")
    if kind == "preference":
        for field in ("chosen", "rejected"):
            if len(row[field]) != 1 or row[field][0]["role"] != "assistant":
                raise BadRow(field, "expected exactly one assistant message")
            _check_content(row[field][0], f"{field}[0]", min_chars)
        if row["chosen"][0]["content"].strip() == row["rejected"][0]["content"].strip():
            raise BadRow("rejected", "same text as 'chosen'")
