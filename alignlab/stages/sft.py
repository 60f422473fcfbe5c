"""SFT recipe: load base (+ LoRA/QLoRA) -> conversations -> trl SFTTrainer -> adapter + metrics.

The loss covers what `loss_scope` says: every assistant turn (through the chat template's
generation markers), the final assistant reply only (the conversation before it becomes the
prompt), or all tokens; the held-out split gives `eval_loss`.
"""
from __future__ import annotations

import math
from typing import Dict

from alignlab.models import load_base
from alignlab.stages import trl_recipe
from alignlab.stages.context import StageContext


def build_trainer(ctx: StageContext):
    """Model (upstream `init` adapter or a fresh seeded one), data and trl SFTTrainer, ready to train."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    h = ctx.hparams
    set_seed(h.seed)
    model = trl_recipe.policy_model(ctx, "init")

    args = trl_recipe.trainer_args(
        ctx,
        SFTConfig,
        max_length=h.max_length,
        assistant_only_loss=h.loss_scope == "assistant",
        completion_only_loss=h.loss_scope == "completion",
        packing=h.packing,
        dataset_num_proc=None,
    )
    prepare = _prompt_completion if h.loss_scope == "completion" else None
    return trl_recipe.trainer(ctx, SFTTrainer, model, args, token_loss=True, prepare=prepare)


def _prompt_completion(tokenizer, rows: list) -> list:
    """Conversations as trl's conversational prompt-completion rows: the final reply is the completion."""
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]


def run(ctx: StageContext) -> Dict[str, float]:
    trainer = build_trainer(ctx)
    metrics = trl_recipe.fit(ctx, trainer)
    if "eval_loss" in metrics:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    if ctx.hparams.merge_export and ctx.cfg.peft.method != "none":
        _export_merged(ctx, trainer.processing_class, ctx.output_model_dir)
    return metrics


def _export_merged(ctx: StageContext, tokenizer, adapter_dir) -> None:
    """Merge the adapter into an unquantized copy of the base and save it as a standalone model."""
    from alignlab.models import QuantConfig, load_adapter

    base = load_base(ctx.cfg.model, QuantConfig(method="none"), ctx.model_cache)
    merged = load_adapter(base, adapter_dir, trainable=False).merge_and_unload()
    merged.save_pretrained(str(ctx.work_dir / "merged"))
    tokenizer.save_pretrained(str(ctx.work_dir / "merged"))
