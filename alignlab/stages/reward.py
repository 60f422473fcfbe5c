"""Reward-model recipe: score head on the base (+ LoRA, optionally started from the SFT adapter)
-> preference pairs -> trl RewardTrainer -> adapter with its score head -> held-out accuracy,
margins and a margin histogram.

`init: sft` copies the SFT node's LoRA weights into the reward adapter (same base, same LoRA
layout), so the transformer starts from the SFT policy and the score head starts fresh; the head
is saved with the adapter (`modules_to_save`) and reloads to identical scores.
`normalize_rows` shifts the scores after training so a reference set (the chosen replies of the
first training pairs) scores 0 on average; the shift is saved with the adapter (`reward_offset.json`)
and every scorer of the artifact subtracts it.
`RewardScorer` is the batched `score(prompt, response)` the PPO stage and the judge call.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from alignlab.models import add_adapter, load_adapter, load_base, load_tokenizer
from alignlab.stages import trl_recipe
from alignlab.stages.context import StageContext

MARGIN_PLOT = "reward_margins.png"
OFFSET_FILE = "reward_offset.json"


def reward_offset(adapter_dir: str | Path) -> float:
    """The score shift a normalised reward node saved with its adapter (0 when not normalised)."""
    path = Path(adapter_dir) / OFFSET_FILE
    return json.loads(path.read_text())["offset"] if path.is_file() else 0.0


class RewardScorer:
    """Batched scalar rewards for (prompt messages, response text) pairs."""

    def __init__(self, model, tokenizer, max_length: int = 512, batch_size: int = 8, offset: float = 0.0):
        self.model = model.eval()
        self.offset = offset  # subtracted from every score (reward normalisation)
        self.tokenizer = tokenizer
        self.tokenizer.truncation_side = "left"  # over-long texts keep their response end, where the score is read
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def from_artifact(cls, artifact_dir: str | Path, cfg, max_length: int = 512, batch_size: int = 8):
        """Base with a score head + the reward node's adapter (frozen), as the pipeline saved it."""
        tokenizer = load_tokenizer(cfg.model, cfg.paths.model_cache)
        base = load_base(cfg.model, cfg.quant, cfg.paths.model_cache, head="score")
        adapter_dir = Path(artifact_dir) / "adapter"
        model = load_adapter(base, adapter_dir, trainable=False)
        return cls(model, tokenizer, max_length, batch_size, reward_offset(adapter_dir))

    def texts(self, prompts: Sequence[List[dict]], responses: Sequence[str]) -> List[str]:
        return [
            self.tokenizer.apply_chat_template(list(p) + [{"role": "assistant", "content": r}], tokenize=False)
            for p, r in zip(prompts, responses)
        ]

    @torch.no_grad()
    def score(self, prompts: Sequence[List[dict]], responses: Sequence[str]) -> torch.Tensor:
        texts = self.texts(prompts, responses)
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[i:i + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
            ).to(device)
            out.append(self.model(**batch).logits[:, 0].float().cpu())
        return torch.cat(out) - self.offset if out else torch.empty(0)

    def chosen_scores(self, rows: Sequence[dict]) -> torch.Tensor:
        return self.score([r["prompt"] for r in rows], [r["chosen"][-1]["content"] for r in rows])

    def margins(self, rows: Sequence[dict]) -> torch.Tensor:
        """r(chosen) - r(rejected) for conversational preference rows."""
        rejected = self.score([r["prompt"] for r in rows], [r["rejected"][-1]["content"] for r in rows])
        return self.chosen_scores(rows) - rejected


def build_trainer(ctx: StageContext):
    """Score-head model (fresh or SFT-initialised adapter), pairs and trl RewardTrainer."""
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    cfg, h = ctx.cfg, ctx.hparams
    set_seed(h.seed)
    base = load_base(cfg.model, cfg.quant, ctx.model_cache, head="score")
    init = ctx.upstream.get("init")
    model = add_adapter(
        base, cfg.peft, cfg.quant, head="score",
        gradient_checkpointing=h.gradient_checkpointing,
        init_from=init.adapter_dir if init is not None else None,
    )
    args = trl_recipe.trainer_args(
        ctx,
        RewardConfig,
        held_out=False,
        max_length=h.max_length,
        center_rewards_coefficient=h.center_rewards_coefficient,
        disable_dropout=h.disable_dropout,
    )
    # held-out pairs are scored once, by `evaluate` below, not by the trainer
    return trl_recipe.trainer(ctx, RewardTrainer, model, args, held_out=False,
                              prepare=functools.partial(tokenized_pairs, max_length=h.max_length))


def tokenized_pairs(tokenizer, rows: Sequence[dict], max_length: int) -> List[dict]:
    """Preference rows as the token ids trl's RewardTrainer would make of them, each side cut to
    its last `max_length` tokens: trl drops longer pairs; alignlab truncates them (`on_too_long:
    truncate`) keeping the response end, where the score is read, as RewardScorer does."""
    def ids(messages: list) -> List[int]:
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"][-max_length:]

    return [{"chosen_ids": ids(r["prompt"] + r["chosen"]), "rejected_ids": ids(r["prompt"] + r["rejected"])}
            for r in rows]


def run(ctx: StageContext) -> Dict[str, float]:
    trainer = build_trainer(ctx)
    metrics = trl_recipe.fit(ctx, trainer)
    h = ctx.hparams
    scorer = RewardScorer(plain_model(trainer), trainer.processing_class, h.max_length, h.score_batch_size)
    if h.normalize_rows:
        reference = ctx.data.train[:h.normalize_rows]
        scorer.offset = scorer.chosen_scores(reference).double().mean().item()
        if trainer.is_world_process_zero():
            (ctx.output_model_dir / OFFSET_FILE).write_text(json.dumps(
                {"offset": scorer.offset, "rows": len(reference), "reference": "chosen replies of the first training pairs"}))
        metrics["reward_offset"] = scorer.offset
    if ctx.data.eval:
        held_out = evaluate(scorer, ctx.data.eval, ctx.work_dir / MARGIN_PLOT, ctx.node)
        metrics.update(held_out)
        ctx.tracker.log(held_out, step=metrics["train_steps"])
    return metrics


def evaluate(scorer: RewardScorer, rows: Sequence[dict], plot_path: Path, title: str) -> Dict[str, float]:
    """Pairwise accuracy and margins of held-out preference rows, with a margin histogram."""
    margins = scorer.margins(rows)
    plot_margins(margins, plot_path, title)
    return {
        "eval_accuracy": (margins > 0).float().mean().item(),
        "eval_margin_mean": margins.mean().item(),
        "eval_margin_std": margins.std().item() if len(margins) > 1 else 0.0,
        "eval_pairs": len(margins),
    }


def plain_model(trainer):
    """The trained model without accelerate's mixed-precision forward wrapper (scores as reloaded)."""
    return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)


def plot_margins(margins: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(margins.numpy(), bins=30, color="#4C72B0")
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_xlabel("reward(chosen) - reward(rejected)")
    ax.set_ylabel("pairs")
    acc = (margins > 0).float().mean().item()
    ax.set_title(f"{title}: held-out margins (accuracy {acc:.2f}, n={len(margins)})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
