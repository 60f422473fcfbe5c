"""Pure PPO maths for RLHF on token sequences.

Follows InstructGPT (Ouyang et al. 2022) and "The N Implementation Details of RLHF with PPO"
(Huang et al. 2024). Per-token tensors are shaped [batch, T]; `mask` (float or bool, 1 = real
response token) marks the response, with padding after it (right padding). Stats are python floats.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

WHITEN_EPS = 1e-8
KL_ESTIMATORS = ("k1", "k3")


def masked_mean(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """Mean of `x` over entries where `mask` is set (over all of them, or along `dim`)."""
    keep = mask.bool()
    return torch.where(keep, x, 0).sum(dim=dim) / keep.sum(dim=dim)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over the masked entries, with Bessel's correction if `unbiased`."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.bool().sum()
        if n < 2:
            raise ValueError(f"unbiased variance needs at least 2 masked entries, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise the masked entries of `x` to unit variance (and zero mean if `shift_mean`); 0 elsewhere."""
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(policy || ref) from tokens sampled by the policy, for logging.

    "k1": logp - ref (unbiased, can be negative per token).
    "k3": (r - 1) - log r with r = exp(ref - logp) (unbiased and never negative; Schulman 2020).
    Both estimate the KL's value; only k1 used as a per-token reward has the KL's gradient
    (E[k1 * grad log p] = grad KL). As a reward, k3's pull vanishes to second order near the
    reference, so `token_rewards` always penalises with k1.
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_ratio = ref_logprobs - logprobs
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def sequence_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: str) -> Tensor:
    """KL(policy || ref) of each sampled response [B]: the per-token estimates summed over real tokens."""
    return torch.where(mask.bool(), kl_penalty(logprobs, ref_logprobs, estimator), 0).sum(-1)


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last real token of each row; every row must have one."""
    keep = mask.bool()
    if not keep.any(dim=1).all():
        raise ValueError("every row needs at least one real response token")
    positions = torch.arange(keep.shape[1], device=keep.device)
    return torch.where(keep, positions, -1).argmax(dim=1)


def token_rewards(scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, kl_coef: float, mask: Tensor) -> Tensor:
    """Per-token rewards: -kl_coef * (logp - ref) (the k1 penalty, see `kl_penalty`) on response
    tokens, plus each row's score [B] at its last real token; 0 on padding, whatever it holds."""
    keep = mask.bool()
    rewards = torch.where(keep, -kl_coef * (logprobs - ref_logprobs), 0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(keep)] += scores.to(rewards.dtype)
    return rewards


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), without gradient.

    The episode ends after the last real token (its next value is 0). Masked positions get 0
    advantage and 0 return and are skipped, so padding never leaks into real tokens.
    Returns (advantages, returns) with returns = advantages + values.
    """
    keep = mask.bool()
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = torch.where(keep[:, t], delta + gamma * lam * next_advantage, 0)
        advantages[:, t] = advantage
        next_value = torch.where(keep[:, t], values[:, t], next_value)
        next_advantage = torch.where(keep[:, t], advantage, next_advantage)
    returns = torch.where(keep, advantages + values, 0)
    return advantages, returns


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> Tuple[Tensor, Dict[str, float]]:
    """PPO clipped surrogate loss: masked mean of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)).

    Stats: `clipfrac`, the fraction of tokens where the clipped term wins (zero gradient), and
    `approx_kl`, 0.5 * mean((logp - old)^2).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask).item(),
            "approx_kl": (0.5 * masked_mean(log_ratio**2, mask)).item(),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range_value: float
) -> Tuple[Tensor, Dict[str, float]]:
    """Clipped value loss: 0.5 * masked mean of max((v - R)^2, (clip(v, old - c, old + c) - R)^2).

    Stats: `clipfrac`, the fraction of tokens where the clipped term wins.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask).item()}
    return loss, stats


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy [B, T] of the categorical distributions given by logits [B, T, V]."""
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - var(returns - values) / var(returns) over masked entries (1 = perfect; nan if returns are constant)."""
    var_returns = masked_var(returns, mask, unbiased=False)
    if var_returns == 0:
        return float("nan")
    return (1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns).item()


def rollout_targets(scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, values: Tensor, mask: Tensor,
                    kl_coef: float, gamma: float, lam: float, whiten_rewards: bool = False,
                    whiten_advantages: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """(rewards, advantages, returns) [B, T] of a rollout batch: `token_rewards`, optionally whitened
    per token without shifting their mean (trl's `whiten_rewards`), then GAE, optionally whitened
    advantages. Non-finite values on padded positions do not leak into real ones."""
    keep = mask.bool()
    rewards = token_rewards(scores, logprobs, ref_logprobs, kl_coef, keep)
    if whiten_rewards:
        rewards = masked_whiten(rewards, keep, shift_mean=False)
    advantages, returns = gae(rewards, values, keep, gamma, lam)
    if whiten_advantages:
        advantages = masked_whiten(advantages, keep)
    return rewards, advantages, returns


def penalize_missing_eos(scores: Tensor, has_eos: Tensor, penalty: Optional[float], mode: str) -> Tensor:
    """Scores of responses without EOS minus `penalty` (mode subtract) or set to -penalty (replace,
    as the N+ details); None: unchanged."""
    if penalty is None:
        return scores
    if mode == "replace":
        return torch.where(has_eos, scores, torch.full_like(scores, -penalty))
    if mode == "subtract":
        return scores - penalty * (~has_eos).to(scores.dtype)
    raise ValueError(f"missing-EOS mode '{mode}' is not one of subtract, replace")


def lr_factor(iteration: int, iterations: int, schedule: str, warmup: int, start_factor: float) -> float:
    """Learning-rate multiplier of 0-based `iteration`: linear warmup from `start_factor` over
    `warmup` iterations (InstructGPT), times the schedule's: constant 1, or linear 1 - iteration /
    iterations (the N+ details' lr decay to 0)."""
    if schedule == "linear":
        factor = 1.0 - iteration / iterations
    elif schedule == "constant":
        factor = 1.0
    else:
        raise ValueError(f"lr schedule '{schedule}' is not one of constant, linear")
    if iteration < warmup:
        factor *= start_factor + (1.0 - start_factor) * iteration / warmup
    return factor


class FixedKLController:
    """Constant KL coefficient."""

    def __init__(self, coef: float) -> None:
        self.coef = coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient stays fixed."""


class AdaptiveKLController:
    """Proportional KL coefficient controller of Ziegler et al. (2019).

    error = clip(current_kl / target - 1, -0.2, 0.2); coef *= 1 + error * n_steps / horizon.
    """

    def __init__(self, init_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got target={target}, horizon={horizon}")
        self.coef = init_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move the coefficient towards keeping `current_kl` (seen over `n_steps` samples) at the target."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n_steps / self.horizon
