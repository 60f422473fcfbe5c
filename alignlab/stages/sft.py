"""SFT recipe: load base (+ LoRA/QLoRA) -> conversations -> trl SFTTrainer -> adapter + metrics.

Loss is on assistant tokens only (`assistant_only_loss`, through the chat template's
generation markers); the held-out split gives `eval_loss`.
"""
from __future__ import annotations

import math
from typing import Dict

from datasets import Dataset

from alignlab.models import add_adapter, load_base, load_tokenizer
from alignlab.stages.context import StageContext

DATA_KIND = "sft"


def build_trainer(ctx: StageContext):
    """Model with a fresh adapter (seeded), data and trl SFTTrainer, ready to train."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    cfg, h = ctx.cfg, ctx.hparams
    set_seed(h.seed)
    tokenizer = load_tokenizer(cfg.model, ctx.model_cache)
    model = load_base(cfg.model, cfg.quant, ctx.model_cache)
    model = add_adapter(model, cfg.peft, cfg.quant, gradient_checkpointing=h.gradient_checkpointing)

    args = ctx.trainer_args(
        SFTConfig,
        max_length=h.max_length,
        assistant_only_loss=h.assistant_only_loss,
        packing=h.packing,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(ctx.data.train),
        eval_dataset=Dataset.from_list(ctx.data.eval) if ctx.data.eval else None,
        processing_class=tokenizer,
        callbacks=[ctx.tracker.callback()],
    )
    return trainer


def run(ctx: StageContext) -> Dict[str, float]:
    cfg, h = ctx.cfg, ctx.hparams
    trainer = build_trainer(ctx)
    tokenizer = trainer.processing_class
    checkpoint = ctx.last_checkpoint()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = {
        "train_loss": result.training_loss,
        "train_steps": result.global_step,
        "resumed_from_step": ctx.checkpoint_step(checkpoint),
    }
    if ctx.data.eval:
        eval_metrics = trainer.evaluate()
        metrics.update(eval_metrics)
        metrics["eval_perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50.0))

    adapter_dir = ctx.work_dir / ("adapter" if cfg.peft.method != "none" else "model")
    trainer.save_model(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    if h.merge_export and cfg.peft.method != "none":
        _export_merged(ctx, tokenizer, adapter_dir)
    return metrics


def _export_merged(ctx: StageContext, tokenizer, adapter_dir) -> None:
    """Merge the adapter into an unquantized copy of the base and save it as a standalone model."""
    from alignlab.models import QuantConfig, load_adapter

    base = load_base(ctx.cfg.model, QuantConfig(method="none"), ctx.model_cache)
    merged = load_adapter(base, adapter_dir, trainable=False).merge_and_unload()
    merged.save_pretrained(str(ctx.work_dir / "merged"))
    tokenizer.save_pretrained(str(ctx.work_dir / "merged"))
