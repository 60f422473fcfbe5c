"""Parsers from raw record shapes to canonical rows (see `rows.py`), one set per format.

A parser takes one raw record and returns a list of canonical rows (most formats give one;
`self_instruct` gives one per instance, `oasst` one per preference pair) or raises `BadRow`.
`prompt` rows of a format without its own prompt parser come from its preference rows (their
prompt) or else its sft rows (final assistant turn dropped).
"""
from __future__ import annotations

import math
import re
from typing import Callable

from .errors import DataError
from .rows import BadRow, Tie, to_prompt

Parser = Callable[[dict], list]


def _text(record, key: str, at: str = "") -> str:
    field = f"{at}.{key}" if at else key
    if not isinstance(record, dict):
        raise BadRow(at, "expected an object")
    value = record.get(key)
    if not isinstance(value, str):
        raise BadRow(field, "missing" if value is None else f"expected a string, got {type(value).__name__}")
    return value


def _list(record: dict, key: str, at: str = "") -> list:
    value = record.get(key)
    if not isinstance(value, list):
        raise BadRow(f"{at}.{key}" if at else key,
                     "missing" if value is None else f"expected a list, got {type(value).__name__}")
    return value


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _pair(prompt: list, chosen: str, rejected: str) -> dict:
    return {"prompt": [dict(m) for m in prompt], "chosen": [_msg("assistant", chosen)], "rejected": [_msg("assistant", rejected)]}


def _with_input(instruction: str, input_: str | None) -> str:
    return f"{instruction}\n\n{input_}" if input_ and input_.strip() else instruction


def _optional_text(record, key: str, at: str = "") -> str | None:
    return None if isinstance(record, dict) and record.get(key) is None else _text(record, key, at)


# --- single-turn instruction formats -------------------------------------------------------

def _alpaca(r: dict) -> list:
    user = _with_input(_text(r, "instruction"), _optional_text(r, "input"))
    return [{"messages": [_msg("user", user), _msg("assistant", _text(r, "output"))]}]


def _alpaca_eval(r: dict) -> list:
    return [{"messages": [_msg("user", _text(r, "instruction")), _msg("assistant", _text(r, "output"))]}]


def _self_instruct(r: dict) -> list:
    instruction = _text(r, "instruction")
    rows = []
    for i, inst in enumerate(_list(r, "instances")):
        at = f"instances[{i}]"
        user = _with_input(instruction, _optional_text(inst, "input", at))
        rows.append({"messages": [_msg("user", user), _msg("assistant", _text(inst, "output", at))]})
    return rows


def _gsm8k(r: dict) -> list:
    return [{"messages": [_msg("user", _text(r, "question")), _msg("assistant", _text(r, "answer"))]}]


def _gsm8k_prompt(r: dict) -> list:
    """The question, with the whole solution (ending in `#### N`) as the reference answer."""
    return [{"prompt": [_msg("user", _text(r, "question"))], "reference": _text(r, "answer")}]


def _first_turn(r: dict) -> list:
    """MT-Bench / Vicuna questions: `turns` (first one only) or FastChat's older `text`."""
    if "turns" not in r:
        return [{"prompt": [_msg("user", _text(r, "text"))]}]
    turns = _list(r, "turns")
    if not turns or not isinstance(turns[0], str):
        raise BadRow("turns[0]", "missing or not a string")
    return [{"prompt": [_msg("user", turns[0])]}]


# --- AlpacaEval pairwise annotations -----------------------------------------------------

def _annotation_pair(r: dict) -> list:
    """preference 1 -> output_1 wins, 2 -> output_2 wins; any other number (0, 1.5) is a tie."""
    prompt = [_msg("user", _text(r, "instruction"))]
    outputs = _text(r, "output_1"), _text(r, "output_2")
    pref = r.get("preference")
    if isinstance(pref, bool) or not isinstance(pref, (int, float)) or math.isnan(pref):
        raise BadRow("preference", f"expected 1, 2 or a tie value, got {pref!r}")
    if pref not in (1, 2):
        raise Tie("preference", f"tie (preference {pref!r})")
    winner = int(pref) - 1
    return [_pair(prompt, outputs[winner], outputs[1 - winner])]


def _annotation_prompt(r: dict) -> list:
    return [{"prompt": [_msg("user", _text(r, "instruction"))]}]


# --- multi-turn chat formats --------------------------------------------------------------

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "system": "system"}


def _sharegpt(r: dict) -> list:
    messages = []
    for i, turn in enumerate(_list(r, "conversations")):
        at = f"conversations[{i}]"
        speaker = _text(turn, "from", at)
        if speaker not in _SHAREGPT_ROLES:
            raise BadRow(f"{at}.from", f"unknown speaker {speaker!r} (expected one of {sorted(_SHAREGPT_ROLES)})")
        messages.append(_msg(_SHAREGPT_ROLES[speaker], _text(turn, "value", at)))
    return [{"messages": messages}]


def _message_list(r: dict, key: str) -> list:
    messages = []
    for i, m in enumerate(_list(r, key)):
        at = f"{key}[{i}]"
        role = _text(m, "role", at)
        if role not in ("system", "user", "assistant"):
            raise BadRow(f"{at}.role", f"unknown role {role!r}")
        messages.append(_msg(role, _text(m, "content", at)))
    return messages


def _messages(r: dict) -> list:
    return [{"messages": _message_list(r, "messages")}]


def _messages_pair(r: dict) -> list:
    """`chosen` / `rejected` as whole conversations (UltraFeedback-binarized shape) that share
    everything before their final assistant turn."""
    chosen, rejected = _message_list(r, "chosen"), _message_list(r, "rejected")
    for key, conversation in (("chosen", chosen), ("rejected", rejected)):
        if len(conversation) < 2 or conversation[-1]["role"] != "assistant":
            raise BadRow(key, "expected a conversation ending with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise BadRow("rejected", "conversation before the final assistant turn differs from 'chosen'")
    return [_pair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"])]


def _messages_prompt(r: dict) -> list:
    """The conversation before the last assistant turn, from either record shape."""
    return [to_prompt(row) for row in (_messages(r) if isinstance(r, dict) and "messages" in r else _messages_pair(r))]


# --- Human/Assistant transcripts (Anthropic HH-RLHF, Guanaco) -------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_GUANACO_TURN = re.compile(r"### (Human|Assistant):")


def _transcript(r: dict, field: str, turn: re.Pattern = _HH_TURN) -> list:
    """Turns of a "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript (or another `turn` marker);
    contents stripped and consecutive turns of one speaker (a few HH rows have them) joined with
    a blank line."""
    parts = turn.split(_text(r, field))
    if parts[0].strip():
        raise BadRow(field, "text before the first 'Human:' turn")
    turns: list = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = "\n\n".join(t for t in (turns[-1]["content"], content.strip()) if t)
        else:
            turns.append(_msg(role, content.strip()))
    if not any(t["role"] == "assistant" for t in turns):
        raise BadRow(field, "no 'Assistant:' turn")
    if turns[-1]["role"] != "assistant":
        raise BadRow(field, "does not end with an 'Assistant:' turn")
    return turns


def _hh_sft(r: dict) -> list:
    return [{"messages": _transcript(r, "chosen")}]


def _guanaco(r: dict) -> list:
    """timdettmers/openassistant-guanaco: `text` = "### Human: ...### Assistant: ..." (QLoRA)."""
    return [{"messages": _transcript(r, "text", _GUANACO_TURN)}]


def _hh_preference(r: dict) -> list:
    chosen, rejected = _transcript(r, "chosen"), _transcript(r, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise BadRow("rejected", "conversation before the final 'Assistant:' turn differs from 'chosen'")
    return [_pair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"])]


# --- OpenAssistant message trees ----------------------------------------------------------

_OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def _oasst_node(node, at: str) -> tuple[dict, list]:
    """(message, replies) of a tree node."""
    role = _text(node, "role", at)
    if role not in _OASST_ROLES:
        raise BadRow(f"{at}.role", f"unknown role {role!r}")
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise BadRow(f"{at}.replies", "expected a list")
    return _msg(_OASST_ROLES[role], _text(node, "text", at)), replies


def _oasst_rank(node: dict, at: str) -> float:
    """`rank` (0 = best among siblings); missing or null ranks sort last."""
    rank = node.get("rank") if isinstance(node, dict) else None
    if rank is None:
        return math.inf
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise BadRow(f"{at}.rank", f"expected a number, got {rank!r}")
    return rank


def _oasst_sft(r: dict) -> list:
    """The best path from the root: the best-ranked assistant reply (first among equals) after
    each prompter turn; after an assistant turn (prompter replies have no rank) the first
    prompter reply that was answered."""
    node, at, messages = r.get("prompt"), "prompt", []
    while True:
        message, replies = _oasst_node(node, at)
        messages.append(message)
        if message["role"] == "user":
            options = [(_oasst_rank(n, f"{at}.replies[{i}]"), i) for i, n in enumerate(replies)]
        else:
            options = [(0, i) for i, n in enumerate(replies) if isinstance(n, dict) and n.get("replies")]
        if not options:
            return [{"messages": messages}]
        i = min(options)[1]
        node, at = replies[i], f"{at}.replies[{i}]"


def _oasst_preference(r: dict, every: bool = False) -> list:
    """For every prompter turn of the tree whose ranked assistant replies have >= 2 distinct
    ranks: one pair per strictly worse-ranked reply, against the best-ranked reply (first among
    equals), or (`every`) one pair per two replies of different rank, with the conversation up to
    that prompter turn as the prompt. Unranked replies take no part in pairs."""
    pairs: list = []

    def visit(node, at: str, history: list) -> None:
        message, replies = _oasst_node(node, at)
        history = history + [message]
        paths = [f"{at}.replies[{i}]" for i in range(len(replies))]
        if message["role"] == "user":
            ranked = sorted((_oasst_rank(n, p), i) for i, (n, p) in enumerate(zip(replies, paths))
                            if isinstance(n, dict) and n.get("rank") is not None)
            if len({rank for rank, _ in ranked}) >= 2:
                text = {i: _oasst_node(replies[i], paths[i])[0]["content"] for _, i in ranked}
                winners = ranked if every else ranked[:1]
                for a, (best_rank, best) in enumerate(winners):
                    pairs.extend(_pair(history, text[best], text[i]) for rank, i in ranked[a + 1:] if rank > best_rank)
        for reply, path in zip(replies, paths):
            visit(reply, path, history)

    visit(r.get("prompt"), "prompt", [])
    return pairs


FORMATS: dict[str, dict[str, Parser]] = {
    "alpaca": {"sft": _alpaca},
    "alpaca_eval": {"sft": _alpaca_eval},
    "alpaca_eval_annotations": {"preference": _annotation_pair, "prompt": _annotation_prompt},
    "sharegpt": {"sft": _sharegpt},
    "messages": {"sft": _messages, "preference": _messages_pair, "prompt": _messages_prompt},
    "oasst": {"sft": _oasst_sft, "preference": _oasst_preference},
    "hh_rlhf": {"sft": _hh_sft, "preference": _hh_preference},
    "guanaco": {"sft": _guanaco},
    "self_instruct": {"sft": _self_instruct},
    "gsm8k": {"sft": _gsm8k, "prompt": _gsm8k_prompt},
    "mtbench": {"prompt": _first_turn},
    "vicuna": {"prompt": _first_turn},
    "columns": {},  # built from DataConfig.columns by `row_parser`
}

_COLUMNS_REQUIRED = {"sft": ("prompt", "response"), "preference": ("prompt", "chosen", "rejected"),
                     "prompt": ("prompt",)}
_COLUMNS_KNOWN = {"prompt", "response", "chosen", "rejected", "system", "reference"}


def _columns_parser(columns: dict, kind: str) -> Parser:
    """Generic records: canonical field -> source column (an empty system cell means none)."""
    unknown = sorted(set(columns) - _COLUMNS_KNOWN)
    missing = [k for k in _COLUMNS_REQUIRED[kind] if k not in columns]
    if unknown or missing:
        raise DataError(f"format 'columns' with kind '{kind}' needs columns {list(_COLUMNS_REQUIRED[kind])} "
                        f"(+ optional 'system', and 'reference' for prompts); missing {missing}, unknown {unknown}")

    def parse(r: dict) -> list:
        system = _optional_text(r, columns["system"]) if "system" in columns else None
        prompt = ([_msg("system", system)] if system else []) + [_msg("user", _text(r, columns["prompt"]))]
        if kind == "sft":
            return [{"messages": prompt + [_msg("assistant", _text(r, columns["response"]))]}]
        if kind == "preference":
            return [_pair(prompt, _text(r, columns["chosen"]), _text(r, columns["rejected"]))]
        reference = {"reference": _text(r, columns["reference"])} if "reference" in columns else {}
        return [{"prompt": prompt, **reference}]

    return parse


# Formats whose preference rows come from ranked replies: their parser with every pair of different rank.
RANKED = {"oasst": lambda r: _oasst_preference(r, every=True)}


def row_parser(fmt: str, kind: str, columns: dict, ranked_pairs: str = "best") -> Parser:
    """The parser turning records of format `fmt` into rows of `kind` (`ranked_pairs`: see DataConfig)."""
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; known formats: {', '.join(sorted(FORMATS))}")
    if ranked_pairs == "all" and kind == "preference":
        if fmt not in RANKED:
            raise DataError(f"ranked_pairs=all: format '{fmt}' has no ranked replies (formats with them: "
                            f"{', '.join(RANKED)})")
        return RANKED[fmt]
    if fmt == "columns":
        return _columns_parser(columns, kind)
    parsers = FORMATS[fmt]
    if kind in parsers:
        return parsers[kind]
    base = parsers.get("preference") or parsers.get("sft")
    if kind != "prompt" or base is None:
        yields = sorted(set(parsers) | ({"prompt"} if base else set()))
        raise DataError(f"format '{fmt}' cannot yield '{kind}' rows (it yields: {', '.join(yields)})")
    return lambda r: [to_prompt(row) for row in base(r)]
