"""DPO recipe: policy = the upstream SFT adapter (trainable) on the base -> preference pairs ->
trl DPOTrainer -> adapter + held-out implicit-reward metrics.

The reference is the same base with a frozen copy of the starting adapter: trl adds it to the
PeftModel as a second adapter named "ref" and switches to it for reference log-probs, so no second
copy of the base is loaded (or, with `precompute_ref_log_probs`, the reference is scored once up
front). Without a `policy` upstream the adapter starts fresh and the reference equals the base.
"""
from __future__ import annotations

from typing import Dict

from omegaconf import OmegaConf

from alignlab.stages import trl_recipe
from alignlab.stages.context import StageContext


def build_trainer(ctx: StageContext):
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    h = ctx.hparams
    set_seed(h.seed)
    model = trl_recipe.policy_model(ctx, "policy")
    args = trl_recipe.trainer_args(
        ctx,
        DPOConfig,
        beta=h.beta,
        loss_type=list(h.loss_type),
        loss_weights=OmegaConf.to_container(h.loss_weights) if h.loss_weights is not None else None,
        label_smoothing=h.label_smoothing,
        max_length=h.max_length,
        precompute_ref_log_probs=h.precompute_ref_log_probs,
        disable_dropout=h.disable_dropout,
    )
    return trl_recipe.trainer(ctx, DPOTrainer, model, args, ref_model=None)


def run(ctx: StageContext) -> Dict[str, float]:
    # The frozen "ref" copy only serves training: the artifact keeps the policy adapter alone.
    return trl_recipe.fit(ctx, build_trainer(ctx), drop_adapters=("ref",))
