"""PPO maths and rollouts; ours because trl 1.x removed PPOTrainer."""
from alignlab.rl.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    clip_and_whiten_scores,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalty,
    last_token_index,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "clip_and_whiten_scores",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "kl_penalty",
    "last_token_index",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "token_rewards",
    "value_loss",
]
