"""Programmatic rewards: any callable `fn(prompts, responses, **columns) -> list[float]`, named by
`_target_` in `stage.ppo.reward_fn` or `stage.grpo.reward_fns` (extra keys are bound as keyword
arguments; `columns` are the prompt rows' extra fields a GRPO/RLOO stage passes by name, e.g.
`reference`).

Verifiable rewards for GSM8K: `gsm8k_correct` (the final number equals the reference's) and
`gsm8k_format` (the answer is given as `#### N`, with partial credit). They are ours: math_verify
parses LaTeX expressions; GSM8K's answers are plain numbers, which a few regular expressions read.
"""
from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation
from typing import Callable, List, Optional, Sequence

from alignlab.errors import ConfigError

RewardFn = Callable[..., List[float]]

# A number: optional sign, digits with optional thousands commas, optional decimals ("-1,234.5", ".5").
_NUMBER = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_HASHES = re.compile(r"####\s*\$?\s*(" + _NUMBER + r")")
_BOXED = re.compile(r"\\boxed\{\s*\$?\s*(" + _NUMBER + r")\s*\}")
_ANY_NUMBER = re.compile(r"(?<![\w.])" + _NUMBER + r"(?![\w])")
_FINAL = re.compile(r"####\s*\$?\s*" + _NUMBER + r"\s*\.?\s*$")


def _value(text: str) -> Optional[Decimal]:
    try:
        return Decimal(text.replace(",", "").rstrip("."))
    except InvalidOperation:
        return None


def final_number(text: str) -> Optional[Decimal]:
    """The answer a GSM8K solution ends with: the last `#### N`, else the last `\\boxed{N}`, else
    the last number in the text; None when there is none. Thousands commas, signs and decimals
    are read (`#### 1,234` -> 1234, `-7`, `2.50` -> 2.5)."""
    for pattern in (_HASHES, _BOXED):
        found = [m for m in pattern.findall(text) if _value(m) is not None]
        if found:
            return _value(found[-1])
    for match in reversed(_ANY_NUMBER.findall(text)):
        if _value(match) is not None:
            return _value(match)
    return None


def gsm8k_correct(prompts: Sequence, responses: Sequence[str], reference: Sequence[str]) -> List[float]:
    """1 when the response's final number equals the reference's (GSM8K's `#### N` answer, or a bare
    number) exactly as a number, else 0 (no number: 0)."""
    out = []
    for response, ref in zip(responses, reference):
        want, got = final_number(ref), final_number(response)
        out.append(float(want is not None and got is not None and got == want))
    return out


def gsm8k_format(prompts: Sequence, responses: Sequence[str]) -> List[float]:
    """How well a response gives its answer in GSM8K's form: 1 when it ends with `#### N`; 0.5 when
    `#### N` appears but text follows it; 0.25 when it has a number but no `#### N`; else 0."""
    out = []
    for response in responses:
        text = response.strip()
        if _FINAL.search(text):
            out.append(1.0)
        elif _HASHES.search(text):
            out.append(0.5)
        elif final_number(text) is not None:
            out.append(0.25)
        else:
            out.append(0.0)
    return out


def target_length(prompts: Sequence[List[dict]], responses: Sequence[str], words: int = 20) -> List[float]:
    """1 at exactly `words` words, falling linearly to 0 at twice (or zero) that length, negative beyond."""
    return [1.0 - abs(len(r.split()) - words) / words for r in responses]


def resolve(spec, key: str = "stage.ppo.reward_fn") -> RewardFn:
    """The callable of a `{_target_: module.fn, **kwargs}` spec (`key`: where it is configured)."""
    from hydra.utils import get_method

    spec = dict(spec)
    target = spec.pop("_target_", None)
    if not target:
        raise ConfigError(f"{key} needs a '_target_' naming a Python callable")
    try:
        fn = get_method(target)
    except Exception as err:  # noqa: BLE001 - hydra raises several kinds; one message names the key
        raise ConfigError(f"{key}._target_ '{target}' cannot be imported: {err}") from None
    return functools.partial(fn, **spec) if spec else fn
