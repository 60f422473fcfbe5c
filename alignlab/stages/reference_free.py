"""ORPO and SimPO recipes (one module, two stage kinds): policy = the upstream SFT adapter (trainable)
or a fresh adapter on the base -> preference pairs -> trl.experimental ORPOTrainer, or CPOTrainer with
loss_type simpo -> adapter + held-out reward metrics. Neither loss has a reference model: nothing but
the policy is loaded or scored.
"""
from __future__ import annotations

import warnings
from typing import Dict

from alignlab.stages import trl_recipe
from alignlab.stages.context import StageContext
from alignlab.stages.pairs import with_room_for_replies


def _trainer_and_fields(ctx: StageContext):
    """(trainer class, config class, the stage's own config fields) of this node's kind."""
    from trl.import_utils import TRLExperimentalWarning

    h = ctx.hparams
    with warnings.catch_warnings():  # alignlab pins trl: "experimental APIs may change" adds nothing here
        warnings.simplefilter("ignore", TRLExperimentalWarning)
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    if ctx.stage == "orpo":
        return ORPOTrainer, ORPOConfig, {"beta": h.beta}
    return CPOTrainer, CPOConfig, {"loss_type": "simpo", "beta": h.beta, "simpo_gamma": h.simpo_gamma,
                                   "cpo_alpha": h.cpo_alpha, "label_smoothing": h.label_smoothing}


def build_trainer(ctx: StageContext):
    from transformers import set_seed

    h = ctx.hparams
    set_seed(h.seed)
    trainer_cls, config_cls, fields = _trainer_and_fields(ctx)
    model = trl_recipe.policy_model(ctx, "policy")
    # remove_unused_columns=False: both trainers need their own tokenized columns (they would switch it off)
    args = trl_recipe.trainer_args(ctx, config_cls, max_length=h.max_length, disable_dropout=h.disable_dropout,
                            remove_unused_columns=False, **fields)
    return trl_recipe.trainer(ctx, trainer_cls, model, args,
                       prepare=lambda tokenizer, rows: with_room_for_replies(ctx, tokenizer, rows))


def run(ctx: StageContext) -> Dict[str, float]:
    return trl_recipe.fit(ctx, build_trainer(ctx))
