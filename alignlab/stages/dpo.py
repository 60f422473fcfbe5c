"""DPO recipe: policy = the upstream SFT adapter (trainable) on the base -> preference pairs ->
trl DPOTrainer -> adapter + held-out implicit-reward metrics.

The reference is the same base with a frozen copy of the starting adapter: trl adds it to the
PeftModel as a second adapter named "ref" and switches to it for reference log-probs, so no second
copy of the base is loaded (or, with `precompute_ref_log_probs`, the reference is scored once up
front). Without a `policy` upstream the adapter starts fresh and the reference equals the base.

alignlab tokenizes the pairs itself (as trl would, plus the prompt budget `max_prompt_length`,
which trl 1.16 lacks: alignlab.stages.prompts) and hands trl the token ids.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Sequence

from omegaconf import OmegaConf

from alignlab.stages import trl_recipe
from alignlab.stages.context import StageContext
from alignlab.stages.prompts import PromptBudget, preference_ids

log = logging.getLogger("alignlab.stages")


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

    class TokenizedDPOTrainer(DPOTrainer):
        """trl's DPOTrainer on rows `tokenized_pairs` made (trl 1.16 tokenizes every dataset it is given)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    def prepare(tokenizer, rows: Sequence[dict]) -> List[dict]:
        return tokenized_pairs(tokenizer, rows, PromptBudget.of(tokenizer, h, f"stage.{ctx.stage}"), h.max_length,
                               ctx.node)

    return trl_recipe.trainer(ctx, TokenizedDPOTrainer, model, args, ref_model=None, prepare=prepare)


def tokenized_pairs(tokenizer, rows: Sequence[dict], budget: PromptBudget, max_length: int, node: str) -> List[dict]:
    """Prompt, chosen and rejected token ids, the prompt cut to the budget; as trl does, pairs whose
    prompt alone fills `max_length` are left out (trl's start-keeping truncation would leave them no
    response token)."""
    pairs = [preference_ids(tokenizer, r, budget) for r in rows]
    kept = [p for p in pairs if len(p["prompt_ids"]) < max_length]
    if len(kept) < len(pairs):
        log.warning("node %s: %d of %d pairs left out: their prompt fills max_length=%d tokens (set "
                    "max_prompt_length below it to keep them)", node, len(pairs) - len(kept), len(pairs), max_length)
    return kept


def run(ctx: StageContext) -> Dict[str, float]:
    # The frozen "ref" copy only serves training: the artifact keeps the policy adapter alone.
    return trl_recipe.fit(ctx, build_trainer(ctx), drop_adapters=("ref",))
