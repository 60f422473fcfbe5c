"""Reward-model recipe: score head on the base (+ LoRA, optionally started from the SFT adapter)
-> preference pairs -> trl RewardTrainer -> adapter with its score head -> held-out accuracy,
margins and a margin histogram.

`init: sft` copies the SFT node's LoRA weights into the reward adapter (same base, same LoRA
layout), so the transformer starts from the SFT policy and the score head starts fresh; the head
is saved with the adapter (`modules_to_save`) and reloads to identical scores.
`normalize_rows` shifts the scores after training so a reference set (the chosen replies of the
first training pairs) scores 0 on average; the shift is saved with the adapter (`reward_offset.json`)
and every scorer of the artifact subtracts it.
`batch_by_prompt` makes a batch element a prompt with all its comparisons (InstructGPT's batching).
`RewardScorer` is the batched `score(prompt, response)` the PPO stage and the judge call.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from alignlab.models import add_adapter, load_adapter, load_base, load_tokenizer
from alignlab.rl.shared_model import chat_texts
from alignlab.stages import trl_recipe
from alignlab.stages.context import StageContext
from alignlab.stages.prompts import PromptBudget, preference_ids

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

    @torch.no_grad()
    def score(self, prompts: Sequence[List[dict]], responses: Sequence[str],
              finished: Optional[Sequence[bool]] = None) -> torch.Tensor:
        """Scores of finished responses (default), or as `finished` says: one cut off without EOS is
        read with its assistant turn left open, as PPO's reward model reads it (`chat_texts`)."""
        texts = chat_texts(self.tokenizer, prompts, responses, [True] * len(responses) if finished is None else finished)
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

    def prepare(tokenizer, rows: Sequence[dict]) -> List[dict]:
        pairs = tokenized_pairs(tokenizer, rows, h.max_length, PromptBudget.of(tokenizer, h, f"stage.{ctx.stage}"))
        return by_prompt(rows, pairs) if h.batch_by_prompt else pairs

    # held-out pairs are scored once, by `evaluate` below, not by the trainer
    if not h.batch_by_prompt:
        return trl_recipe.trainer(ctx, RewardTrainer, model, args, held_out=False, prepare=prepare)
    return trl_recipe.trainer(ctx, by_prompt_trainer(RewardTrainer), model, args, held_out=False, prepare=prepare)


def tokenized_pairs(tokenizer, rows: Sequence[dict], max_length: int, budget: PromptBudget) -> List[dict]:
    """Preference rows as the token ids trl's RewardTrainer would make of them, the prompt cut to
    the budget, each side cut to its last `max_length` tokens: trl drops longer pairs; alignlab
    truncates them (`on_too_long: truncate`) keeping the response end, where the score is read, as
    RewardScorer does."""
    out = []
    for row in rows:
        ids = preference_ids(tokenizer, row, budget)
        out.append({f"{side}_ids": (ids["prompt_ids"] + ids[f"{side}_ids"])[-max_length:] for side in ("chosen", "rejected")})
    return out


def by_prompt(rows: Sequence[dict], pairs: Sequence[dict]) -> List[dict]:
    """One element per prompt (in order of first appearance): the token ids of its distinct
    (prompt + response) sequences and its comparisons as (winner, loser) indices into them."""
    groups: Dict[str, dict] = {}
    for row, pair in zip(rows, pairs):
        group = groups.setdefault(json.dumps(row["prompt"], sort_keys=True), {"seqs": {}, "pairs": []})
        index = [group["seqs"].setdefault(tuple(pair[f"{side}_ids"]), len(group["seqs"])) for side in ("chosen", "rejected")]
        group["pairs"].append(index)
    return [{"response_ids": [list(seq) for seq in g["seqs"]], "pairs": g["pairs"]} for g in groups.values()]


def collate_by_prompt(elements: Sequence[dict], pad_token_id: int = 0) -> Dict[str, torch.Tensor]:
    """A batch of whole prompts: every distinct sequence once (right-padded), each comparison as
    indices into them, and the batch element (prompt) each comparison belongs to."""
    from torch.nn.utils.rnn import pad_sequence

    seqs, pairs, prompt = [], [], []
    for i, element in enumerate(elements):
        pairs += [[len(seqs) + w, len(seqs) + l] for w, l in element["pairs"]]
        prompt += [i] * len(element["pairs"])
        seqs += [torch.tensor(ids) for ids in element["response_ids"]]
    return {"input_ids": pad_sequence(seqs, batch_first=True, padding_value=pad_token_id),
            "attention_mask": pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True),
            "pairs": torch.tensor(pairs), "prompt": torch.tensor(prompt)}


def prompt_batch_loss(rewards: torch.Tensor, pairs: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """InstructGPT's reward-model loss (Ouyang et al. 2022, Eq. 1): -log sigmoid(r_w - r_l) averaged
    over each prompt's comparisons (the 1/C(K,2) factor), then over the prompts of the batch."""
    terms = -torch.nn.functional.logsigmoid(rewards[pairs[:, 0]] - rewards[pairs[:, 1]])
    count = int(prompt.max()) + 1
    sums = torch.zeros(count, dtype=terms.dtype, device=terms.device).index_add(0, prompt, terms)
    return (sums / torch.bincount(prompt, minlength=count)).mean()


def by_prompt_trainer(reward_trainer_cls):
    """trl's RewardTrainer (its optimizer, schedule, checkpoints and logging) with one batch element
    per prompt. Written here because trl's collator and loss take exactly one (chosen, rejected)
    pair per element, which scores a response once per comparison it is in."""

    class ByPromptRewardTrainer(reward_trainer_cls):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # tokenized and grouped by `by_prompt`

        def _set_signature_columns_if_needed(self):
            self._signature_columns = ["response_ids", "pairs"]

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)  # sets the tokenizer's pad token
            self.data_collator = functools.partial(collate_by_prompt, pad_token_id=self.processing_class.pad_token_id)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            pairs, prompt = inputs.pop("pairs"), inputs.pop("prompt")
            outputs = model(**inputs, use_cache=False)
            rewards = outputs.logits.squeeze(-1)
            loss = prompt_batch_loss(rewards, pairs, prompt)
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean(rewards ** 2)
            mode = "train" if self.model.training else "eval"
            with torch.no_grad():
                margins = rewards[pairs[:, 0]] - rewards[pairs[:, 1]]
                self._metrics[mode]["accuracy"].append((margins > 0).float().mean().item())
                self._metrics[mode]["margin"].append(margins.mean().item())
                self._metrics[mode]["mean_reward"].append(rewards.mean().item())
            return (loss, outputs) if return_outputs else loss

    return ByPromptRewardTrainer


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
