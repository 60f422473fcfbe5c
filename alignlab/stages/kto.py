"""KTO recipe: policy = the upstream SFT adapter (trainable) on the base -> unpaired rows derived from
preference pairs -> trl KTOTrainer -> adapter + held-out implicit-reward metrics.

As in DPO, trl adds a frozen copy of the starting adapter as a second adapter ("ref") for reference
log-probs, so one base serves both; without a `policy` upstream the reference is the base.
"""
from __future__ import annotations

import random
from typing import Dict, List

from alignlab.stages import trl_recipe
from alignlab.stages.context import StageContext
from alignlab.stages.pairs import with_room_for_replies


def unpaired(pairs: List[dict], seed: int) -> List[dict]:
    """Preference pairs as KTO rows: each pair's chosen reply a desirable row and its rejected reply an
    undesirable row for the same prompt.

    Written here rather than left to trl's `unpair_preference_dataset`: that puts every chosen row before
    every rejected one, and KTOTrainer reads rows in order (its KL estimate pairs each row with its batch
    neighbour), so batches would hold one class only. Here, as the paper's first code release batched them
    (HALOs@0594a02, UnpairedPreferenceDataLoader), desirable and undesirable rows of different prompts alternate:
    the pairs are shuffled by `seed`; the first half of the rows takes the chosen reply of every other
    pair and the rejected reply of the rest, the second half the other reply of each pair, in the same order.
    """
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    halves: tuple = ([], [])
    for k, i in enumerate(order):
        for half, desirable in enumerate((k % 2 == 0, k % 2 == 1)):
            reply = pairs[i]["chosen" if desirable else "rejected"]
            halves[half].append({"prompt": pairs[i]["prompt"], "completion": reply, "label": desirable})
    return halves[0] + halves[1]


def build_trainer(ctx: StageContext):
    from transformers import set_seed
    from trl import KTOConfig, KTOTrainer

    h = ctx.hparams
    set_seed(h.seed)
    model = trl_recipe.policy_model(ctx, "policy")
    args = trl_recipe.trainer_args(
        ctx,
        KTOConfig,
        beta=h.beta,
        desirable_weight=h.desirable_weight,
        undesirable_weight=h.undesirable_weight,
        loss_type=h.loss_type,
        max_length=h.max_length,
        precompute_ref_log_probs=h.precompute_ref_log_probs,
        disable_dropout=h.disable_dropout,
    )
    return trl_recipe.trainer(ctx, KTOTrainer, model, args, ref_model=None,
                       prepare=lambda tokenizer, rows: unpaired(with_room_for_replies(ctx, tokenizer, rows), h.seed))


def run(ctx: StageContext) -> Dict[str, float]:
    # The frozen "ref" copy only serves training: the artifact keeps the policy adapter alone.
    return trl_recipe.fit(ctx, build_trainer(ctx), drop_adapters=("ref",))
