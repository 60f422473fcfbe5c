"""What the trl-based recipes (sft, reward, dpo) share: training arguments from a stage's
TrainerConfig, a trainer over the node's rows with alignlab's callbacks, length filtering, and
fitting with checkpoint resume. Recipes call these with their StageContext, e.g.

    args = trl_recipe.trainer_args(ctx, DPOConfig, beta=h.beta)
    trainer = trl_recipe.trainer(ctx, DPOTrainer, trl_recipe.policy_model(ctx, "policy"), args)
    metrics = trl_recipe.fit(ctx, trainer)
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from omegaconf import OmegaConf

from alignlab.errors import TrainingDivergedError
from alignlab.models.precision import mixed_precision
from alignlab.stages.context import CollapseWatch, StageContext

log = logging.getLogger("alignlab.stages")

# TrainerConfig fields handed to transformers/trl under the same name.
PASSED_THROUGH = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                  "per_device_eval_batch_size", "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps",
                  "weight_decay", "max_grad_norm", "optim", "adam_beta1", "adam_beta2", "adam_epsilon",
                  "logging_steps", "eval_steps", "save_steps")


def trainer_fields(h: dict, has_eval: bool) -> dict:
    """The transformers/trl training-argument fields alignlab sets from a stage's TrainerConfig `h`."""
    precision = mixed_precision(h["mixed_precision"])
    return {
        **{name: h[name] for name in PASSED_THROUGH},
        "activation_checkpointing": h["gradient_checkpointing"],
        "eval_strategy": "steps" if has_eval and h["eval_steps"] else "no",
        "save_strategy": "steps",
        "save_total_limit": 2,
        "seed": h["seed"],
        "data_seed": h["seed"],
        "report_to": "none",
        "use_cpu": not torch.cuda.is_available(),
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "dataloader_num_workers": 0,
        "remove_unused_columns": True,
    }


def trainer_args(ctx: StageContext, config_cls, held_out: bool = True, **stage_specific):
    """A trl/transformers config from the node's shared TrainerConfig fields plus stage fields
    (`extra` last). `held_out=False`: the trainer gets no eval split (the stage evaluates on its own)."""
    h = OmegaConf.to_container(ctx.hparams, resolve=True)
    extra = h.pop("extra", {}) or {}
    common = {"output_dir": str(ctx.checkpoint_dir), **trainer_fields(h, held_out and bool(ctx.data.eval))}
    return config_cls(**{**common, **stage_specific, **extra})


def policy_model(ctx: StageContext, role: str):
    """Causal LM to train: the upstream `role` node's adapter (trainable) or a fresh adapter."""
    from alignlab.models import add_adapter, load_adapter, load_base

    cfg = ctx.cfg
    upstream = ctx.upstream.get(role)
    if upstream is not None and upstream.full_model_dir.is_dir():  # upstream was fully fine-tuned
        return load_base(upstream.model_config(cfg.model), cfg.quant, ctx.model_cache)
    model = load_base(cfg.model, cfg.quant, ctx.model_cache)
    if upstream is not None:
        return load_adapter(model, upstream.adapter_dir, trainable=True)
    return add_adapter(model, cfg.peft, cfg.quant, gradient_checkpointing=ctx.hparams.gradient_checkpointing)


def trainer(ctx: StageContext, trainer_cls, model, args, held_out: bool = True, token_loss: bool = False,
            prepare: Optional[Callable[[Any, list], list]] = None, **kwargs):
    """A trl trainer over the node's rows, tokenizer, tracking callback and guards (`token_loss`:
    the loss is next-token cross-entropy, so a collapse to uniform is detectable; `prepare(tokenizer,
    rows)`: the rows as the trainer gets them, after `fit_to_length`); the model's dropout off if
    the stage says so."""
    from datasets import Dataset

    from alignlab.models import disable_dropout, load_tokenizer

    evaluate = held_out and bool(ctx.data.eval)
    tokenizer = load_tokenizer(ctx.cfg.model, ctx.model_cache)
    train = fit_to_length(ctx, tokenizer, ctx.data.train, "train")
    held = fit_to_length(ctx, tokenizer, ctx.data.eval, "eval") if evaluate else []
    if prepare is not None:
        train, held = prepare(tokenizer, train), prepare(tokenizer, held)
    if ctx.hparams.disable_dropout:
        disable_dropout(model)
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(held) if held else None,
        processing_class=tokenizer,
        callbacks=[ctx.tracker.callback(), divergence_guard(ctx.node, ctx.stage),
                   collapse_guard(ctx.node, ctx.stage, ctx.hparams, token_loss)],
        **kwargs,
    )


def fit_to_length(ctx: StageContext, tokenizer, rows: list, split: str) -> list:
    """Rows longer than `max_length` tokens (rendered through the chat template; a preference row
    by its longer side) are counted in `ctx.too_long` and left to the trainer's truncation,
    dropped, or an error, as `on_too_long` says."""
    from alignlab.data import DataError

    h, key = ctx.hparams, f"stage.{ctx.stage}"

    def tokens(messages: list) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def length(row: dict) -> int:
        if "messages" in row:
            return tokens(row["messages"])
        return max(tokens(row["prompt"] + row[side]) for side in ("chosen", "rejected"))

    lengths = [length(r) for r in rows]
    over = [i for i, n in enumerate(lengths) if n > h.max_length]
    ctx.too_long[split] = len(over)
    if not over:
        return rows
    where = f"{ctx.data.report['path']}: {split} row {over[0] + 1} of {len(rows)}"
    if h.on_too_long == "error":
        raise DataError(f"{where} has {lengths[over[0]]} tokens, more than {key}.max_length={h.max_length}; "
                        f"set {key}.on_too_long=truncate or drop, or raise max_length")
    log.warning("node %s: %d of %d %s rows are longer than max_length=%d tokens: %s", ctx.node, len(over),
                len(rows), split, h.max_length, "dropped" if h.on_too_long == "drop" else "truncated")
    if h.on_too_long == "truncate":
        return rows
    kept = [r for i, r in enumerate(rows) if lengths[i] <= h.max_length]
    if not kept:
        raise DataError(f"{where}: every {split} row is longer than {key}.max_length={h.max_length}")
    return kept


def last_checkpoint(ctx: StageContext) -> Optional[str]:
    """The newest trainer checkpoint of an interrupted earlier attempt, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    if not ctx.checkpoint_dir.is_dir():
        return None
    return get_last_checkpoint(str(ctx.checkpoint_dir))


def checkpoint_step(checkpoint: Optional[str]) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else 0


def fit(ctx: StageContext, trainer, drop_adapters: tuple = ()) -> Dict[str, Any]:
    """Train (resuming from the newest checkpoint), evaluate the held-out split, save the adapter.

    `drop_adapters` names helper adapters (e.g. a frozen reference copy) left out of the artifact.
    """
    checkpoint = last_checkpoint(ctx)
    if trainer.is_world_process_zero():
        ctx.tracker.rewind(checkpoint_step(checkpoint))
    recorded = ctx.work_dir / "train_result.json"
    previous = json.loads(recorded.read_text()) if recorded.is_file() else None
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics: Dict[str, Any] = {
        "train_loss": result.training_loss,
        "train_steps": result.global_step,
        "resumed_from_step": checkpoint_step(checkpoint),
    }
    # Killed after the last step but before publishing: the rerun trains 0 steps, so the
    # training result recorded by the first attempt is the true one.
    if previous is not None and result.global_step == metrics["resumed_from_step"]:
        metrics = {**previous, "resumed_from_step": metrics["resumed_from_step"]}
    elif trainer.is_world_process_zero():
        recorded.write_text(json.dumps(metrics))
    metrics.update({f"rows_over_max_length/{split}": n for split, n in ctx.too_long.items()})
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    for name in drop_adapters:
        if name in getattr(trainer.model, "peft_config", {}):
            trainer.model.delete_adapter(name)
    out = ctx.output_model_dir
    trainer.save_model(str(out))  # main process only
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(out))
        # transformers pickles its TrainingArguments next to the weights; the artifact keeps
        # safetensors and JSON only (config.json records every setting)
        (out / "training_args.bin").unlink(missing_ok=True)
    return metrics


def divergence_guard(node: str, stage: str):
    """A trainer callback that stops training once a trainable weight is NaN/inf.

    It runs at the end of every optimizer step, before the trainer writes that step's checkpoint,
    so the newest checkpoint on disk is the last finite one. (transformers' own logging filters
    NaN losses out of the logged average, so the weights are what is checked.)
    """
    from transformers import TrainerCallback

    class DivergenceGuard(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if any(not torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
                raise TrainingDivergedError(
                    f"node {node}: a trainable weight became NaN/inf at step {state.global_step}; lower "
                    f"stage.{stage}.learning_rate (checkpoints up to the last finite step are kept, the node "
                    "is not published)")

    return DivergenceGuard()


def collapse_guard(node: str, stage: str, hparams, token_loss: bool):
    """A trainer callback feeding each logged loss, gradient norm and learning rate to a CollapseWatch."""
    from transformers import TrainerCallback

    class CollapseGuard(TrainerCallback):
        watch: Optional[CollapseWatch] = None

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if self.watch is None:
                uniform = math.log(model.config.vocab_size) if token_loss else None
                self.watch = CollapseWatch(node, stage, hparams.collapse_patience, hparams.collapse_tolerance, uniform)
            logs = logs or {}
            self.watch.update(state.global_step, logs.get("loss"), logs.get("grad_norm"), logs.get("learning_rate"))

    return CollapseGuard()
