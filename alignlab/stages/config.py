"""Structured configs of the `stage` Hydra group: hyperparameters of each stage kind."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class TrainerConfig:
    """Training-loop settings every trainer-based stage shares (mapped onto transformers' TrainingArguments)."""

    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.0  # >= 1: steps; < 1: fraction of all training steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    mixed_precision: str = "auto"  # auto (bf16 where the GPU/CPU computes it natively) | no | bf16 | fp16
    gradient_checkpointing: bool = False
    on_too_long: str = "truncate"  # rows over max_length tokens: truncate (counted) | drop (counted) | error
    logging_steps: int = 5
    eval_steps: Optional[int] = None  # None: evaluate once at the end only
    save_steps: int = 50  # checkpoint interval (resume point after an interruption)
    seed: int = 42
    extra: Dict[str, Any] = field(default_factory=dict)  # any further trl/transformers config field


@dataclass
class SFTStageConfig(TrainerConfig):
    """Supervised fine-tuning on conversations (trl SFTTrainer)."""

    max_length: int = 1024
    assistant_only_loss: bool = True  # loss on assistant tokens only
    packing: bool = False
    merge_export: bool = False  # also write the adapter merged into the base weights (merged/)


@dataclass
class RewardStageConfig(TrainerConfig):
    """Bradley-Terry reward model on preference pairs (trl RewardTrainer), 1-logit score head."""

    learning_rate: float = 1e-4
    max_length: int = 512
    center_rewards_coefficient: Optional[float] = None  # e.g. 0.01 keeps rewards centred on 0
    disable_dropout: bool = True
    score_batch_size: int = 8  # batch size of held-out scoring (accuracy, margins)


@dataclass
class DPOStageConfig(TrainerConfig):
    """Direct preference optimisation (trl DPOTrainer); the reference is the frozen starting adapter."""

    learning_rate: float = 5e-5
    beta: float = 0.1
    loss_type: List[str] = field(default_factory=lambda: ["sigmoid"])  # sigmoid | ipo | hinge | robust | ...
    loss_weights: Optional[List[float]] = None  # weights when several loss types are combined
    label_smoothing: float = 0.0  # conservative DPO / robust DPO noise rate
    max_length: int = 512
    precompute_ref_log_probs: bool = False  # score the reference once up front instead of every step
    disable_dropout: bool = True


@dataclass
class PPOStageConfig:
    """PPO against a reward node or a programmatic reward (alignlab.rl; trl 1.x has no PPO).

    Defaults follow "The N Implementation Details of RLHF with PPO" (Huang et al. 2024): k1 KL
    penalty per token, no discount, lambda 0.95, advantage whitening, EOS penalty, 4 PPO epochs.
    """

    learning_rate: float = 3e-5
    iterations: int = 100  # rollout + update rounds
    rollout_batch_size: int = 16  # prompts sampled per iteration (per process)
    mini_batch_size: int = 8  # samples per optimizer step
    gradient_accumulation_steps: int = 1  # micro-batches per minibatch
    ppo_epochs: int = 4  # passes over each rollout batch
    max_prompt_length: int = 256  # longer prompts are left out (counted in the log)
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    missing_eos_penalty: Optional[float] = 1.0  # subtracted from the score of responses without EOS
    kl_estimator: str = "k1"  # k1 (log-ratio) | k3 (non-negative, unbiased)
    kl_coef: float = 0.05  # initial coefficient of the per-token KL penalty
    kl_target: Optional[float] = None  # set: adaptive KL controller (Ziegler et al.) toward this KL
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    whiten_rewards: bool = False  # whiten the scores over each rollout batch
    reward_clip: Optional[float] = None  # clamp scores to +-reward_clip
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    reference: str = "sft"  # sft: frozen copy of the starting policy adapter | base: adapters disabled
    value_init: str = "reward"  # reward: value adapter and head start from the reward node | fresh
    reward_fn: Dict[str, Any] = field(default_factory=dict)  # {_target_: module.fn, **kwargs}; empty: reward node
    reward_max_length: int = 512  # tokens of prompt + response the reward model reads
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False  # recompute layer activations in the backward passes (less memory)
    logging_steps: int = 1
    save_steps: int = 10  # checkpoint interval in iterations
    sample_responses: int = 4  # responses per iteration kept in samples.jsonl
    seed: int = 42


@dataclass
class StageGroupConfig:
    """One hyperparameter block per stage kind; pipeline nodes pick theirs by `stage`."""

    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    reward: RewardStageConfig = field(default_factory=RewardStageConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
    ppo: PPOStageConfig = field(default_factory=PPOStageConfig)
