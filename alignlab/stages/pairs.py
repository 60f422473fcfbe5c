"""Preference pairs as the pair-based recipes (KTO, ORPO, SimPO) hand them to trl."""
from __future__ import annotations

import logging
from typing import List

log = logging.getLogger("alignlab.stages")


def with_room_for_replies(ctx, tokenizer, pairs: List[dict]) -> List[dict]:
    """The pairs whose prompt leaves room for a reply within max_length (counted in the log). A pair
    without is no signal and breaks the trainers: ORPO and SimPO average the log-probs of an empty
    reply (0/0 = NaN); KTOTrainer drops such rows one at a time, which would break the alternation
    `kto.unpaired` lays out."""
    h = ctx.hparams

    def prompt_tokens(pair: dict) -> int:
        rendered = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)
        return len(rendered["input_ids"])

    kept = [p for p in pairs if prompt_tokens(p) < h.max_length]
    if len(kept) < len(pairs):
        log.warning("node %s: %d of %d pairs left out: their prompt alone fills stage.%s.max_length=%d",
                    ctx.node, len(pairs) - len(kept), len(pairs), ctx.stage, h.max_length)
    return kept
