"""Verifiable GSM8K rewards against hand-written answers."""
from __future__ import annotations

from decimal import Decimal

import pytest

from alignlab.rl import rewards

REF = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"


@pytest.mark.parametrize("text, number", [
    ("so the answer is\n#### 72", Decimal(72)),
    ("#### 1,234", Decimal(1234)),
    ("#### -5", Decimal(-5)),
    ("#### 2.50", Decimal("2.5")),
    ("#### $18", Decimal(18)),
    ("The total is \\boxed{1,000}.", Decimal(1000)),
    ("first 3 then \\boxed{-12} and 7", Decimal(-12)),
    ("#### 5 but \\boxed{6}", Decimal(5)),  # `#### N` wins over \boxed{}
    ("He has 3 apples and buys 4 more, 7 in all.", Decimal(7)),
    ("It costs 1,250.75 dollars.", Decimal("1250.75")),
    ("I do not know.", None),
    ("", None),
])
def test_final_number(text, number):
    assert rewards.final_number(text) == number


def test_gsm8k_correct_hand_cases():
    responses = [
        "48 + 24 = 72\n#### 72",         # correct
        "48 + 24 = 73\n#### 73",         # incorrect
        "I cannot solve this.",          # unparseable
        "So she sold 72 clips.",         # correct by the last number
        "#### 72.0",                     # the same number written with a decimal
        "#### 7,2",                      # not a thousands group: reads 7 then 2 -> last number 2
    ]
    assert rewards.gsm8k_correct([None] * 6, responses, [REF] * 6) == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert rewards.gsm8k_correct([None] * 3, ["#### 1,234", "\\boxed{-3}", "#### -3"],
                                 ["#### 1234", "#### -3", "#### 3"]) == [1.0, 1.0, 0.0]


def test_gsm8k_format_partial_credit():
    responses = ["12 * 3 = 36\n#### 36", "#### 36.", "#### 36 because 12 * 3", "the answer is 36", "no idea", "  "]
    assert rewards.gsm8k_format([None] * 6, responses) == [1.0, 1.0, 0.5, 0.25, 0.0, 0.0]


def test_resolve_names_the_key():
    from alignlab.errors import ConfigError

    fn = rewards.resolve({"_target_": "alignlab.rl.rewards.gsm8k_format"}, key="stage.grpo.reward_fns.format")
    assert fn([None], ["#### 1"]) == [1.0]
    with pytest.raises(ConfigError, match=r"stage.grpo.reward_fns.x._target_ 'nope.fn'"):
        rewards.resolve({"_target_": "nope.fn"}, key="stage.grpo.reward_fns.x")
