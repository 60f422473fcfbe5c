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
class StageGroupConfig:
    """One hyperparameter block per stage kind; pipeline nodes pick theirs by `stage`."""

    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    reward: RewardStageConfig = field(default_factory=RewardStageConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
