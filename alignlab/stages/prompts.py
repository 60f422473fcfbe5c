"""Prompt budgets: a prompt longer than a stage's `max_prompt_length` tokens keeps its end
(`keep_end`: the final user turn and the generation prompt) or its start (`keep_start`: the first
tokens, then the generation prompt, so the response still follows the assistant header). A
preference stage cuts every such prompt (`cut_prompts: always`, as later trl versions did) or only
those of pairs longer than its `max_length` (`over_max_length`, as the DPO paper's code did).

Written here because trl 1.16 has no prompt budget (DPOConfig dropped `max_prompt_length`; its
`truncation_mode` cuts the whole prompt+response sequence, and `keep_end` is deprecated) and
alignlab's PPO renders its own prompts. The cut is made on the token ids of the prompt as the chat
template renders it, with the generation prompt, and nothing is rendered again after it: the kept
tokens are exactly the template's (the reference DPO code cuts its tokenized prompts the same way).
"""
from __future__ import annotations

from typing import List, Optional

from alignlab.errors import ConfigError

_PROBE = [{"role": "user", "content": "x"}]


def chat_ids(tokenizer, messages: list, generation_prompt: bool = False) -> List[int]:
    """Token ids of `messages` rendered by the chat template."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                         return_dict=True)["input_ids"]


def generation_prompt_length(tokenizer) -> int:
    """Tokens the chat template appends to open the assistant's turn (e.g. `<|im_start|>assistant\\n`)."""
    from trl.data_utils import common_prefix_length

    opened, closed = chat_ids(tokenizer, _PROBE, True), chat_ids(tokenizer, _PROBE)
    return len(opened) - common_prefix_length(opened, closed)


class PromptBudget:
    """Cuts prompt token ids to `max_length` (None: no budget) as `mode` says; `key` (e.g. stage.dpo)
    names the setting in errors; `pair_max_length` set: a pair's prompt is cut only when prompt +
    longer response exceed it."""

    def __init__(self, tokenizer, max_length: Optional[int], mode: str, key: str,
                 pair_max_length: Optional[int] = None):
        self.max_length, self.mode, self.pair_max_length = max_length, mode, pair_max_length
        self.opener = generation_prompt_length(tokenizer) if max_length is not None else 0
        if max_length is not None and max_length <= self.opener:
            raise ConfigError(f"{key}.max_prompt_length={max_length}: the chat template's generation prompt alone "
                              f"takes {self.opener} tokens; allow more")

    @classmethod
    def of(cls, tokenizer, h, key: str) -> "PromptBudget":
        """The budget a stage's settings `h` declare (none for stages without `max_prompt_length`)."""
        pair_max_length = h.max_length if h.get("cut_prompts") == "over_max_length" else None
        return cls(tokenizer, h.get("max_prompt_length"), h.get("on_long_prompt", "keep_end"), key, pair_max_length)

    def __call__(self, ids: List[int]) -> List[int]:
        if self.max_length is None or len(ids) <= self.max_length:
            return ids
        if self.mode == "keep_end":
            return ids[-self.max_length:]
        return ids[:self.max_length - self.opener] + ids[len(ids) - self.opener:]


def preference_ids(tokenizer, row: dict, budget: PromptBudget) -> dict:
    """`prompt_ids` (cut to the budget), `chosen_ids` and `rejected_ids` (the responses, untouched) of a
    conversational preference row, split as trl's DPOTrainer splits them: each response starts where
    the tokenized prompt and prompt+response diverge."""
    from trl.data_utils import common_prefix_length

    prompt = chat_ids(tokenizer, row["prompt"], generation_prompt=True)
    sides = {side: chat_ids(tokenizer, row["prompt"] + row[side]) for side in ("chosen", "rejected")}
    start = min(common_prefix_length(prompt, ids) for ids in sides.values())
    prompt, responses = prompt[:start], {f"{side}_ids": ids[start:] for side, ids in sides.items()}
    if budget.pair_max_length is None or start + max(map(len, responses.values())) > budget.pair_max_length:
        prompt = budget(prompt)
    return {"prompt_ids": prompt, **responses}
