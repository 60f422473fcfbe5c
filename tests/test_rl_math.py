"""PPO maths against hand-computed values (alignlab.rl.ppo_math)."""
from __future__ import annotations

import math

import pytest
import torch

from alignlab.rl import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalty,
    lr_factor,
    masked_mean,
    masked_var,
    masked_whiten,
    penalize_missing_eos,
    policy_loss,
    rollout_targets,
    sequence_kl,
    token_rewards,
    value_loss,
)

PAD = 1e6  # garbage in padded positions: any leak shows up in the results


def close(actual, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


# Real entries 1..5 spread over two right-padded rows: mean 3, biased var 2, unbiased var 2.5.
X = torch.tensor([[1.0, 2.0, 3.0, PAD], [4.0, 5.0, PAD, PAD]])
X_MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])


def test_masked_mean_overall_and_per_row():
    close(masked_mean(X, X_MASK), 3.0)
    close(masked_mean(X, X_MASK, dim=1), [2.0, 4.5])  # (1+2+3)/3, (4+5)/2
    close(masked_mean(X, X_MASK.bool()), 3.0)  # bool masks work too


def test_masked_var_biased_and_unbiased():
    close(masked_var(X, X_MASK, unbiased=False), 2.0)  # (4+1+0+1+4)/5
    close(masked_var(X, X_MASK), 2.5)  # 10/4
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(X, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))


def test_masked_whiten_zero_mean_unit_var_and_zero_padding():
    w = masked_whiten(X, X_MASK)
    s = math.sqrt(2.5)  # (x - 3) / sqrt(2.5): 1/sqrt(2.5) = 0.6324555
    close(w, [[-2 / s, -1 / s, 0.0, 0.0], [1 / s, 2 / s, 0.0, 0.0]])
    close(w, [[-1.2649111, -0.6324555, 0.0, 0.0], [0.6324555, 1.2649111, 0.0, 0.0]])
    close(masked_mean(w, X_MASK), 0.0)
    close(masked_var(w, X_MASK), 1.0)
    assert torch.equal(w[~X_MASK.bool()], torch.zeros(3))


def test_masked_whiten_keep_mean():
    w = masked_whiten(X, X_MASK, shift_mean=False)
    close(w, [[3 - 1.2649111, 3 - 0.6324555, 3.0, 0.0], [3 + 0.6324555, 3 + 1.2649111, 0.0, 0.0]])


def test_kl_estimators_on_explicit_numbers():
    logp = torch.tensor([-1.0, -2.0, -0.7])
    ref = torch.tensor([-1.5, -1.0, -0.7])
    # k1 = logp - ref
    close(kl_penalty(logp, ref, "k1"), [0.5, -1.0, 0.0])
    # log r = ref - logp = [-0.5, 1, 0]; k3 = (e^{log r} - 1) - log r
    # = [0.6065307 - 1 + 0.5, 2.7182818 - 1 - 1, 0]
    close(kl_penalty(logp, ref, "k3"), [0.1065307, 0.7182818, 0.0])


def test_k3_never_negative_while_k1_can_be():
    gen = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(2, 64, 32, generator=gen)
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, ref, "k1") < 0).any()


def test_unknown_kl_estimator_is_named():
    with pytest.raises(ValueError, match="'k2'"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k2")


def test_token_rewards_score_at_last_real_token():
    logp = torch.tensor([[-0.1, -0.2, -0.3, -0.4], [-0.5, -0.2, PAD, -PAD]])
    ref = torch.tensor([[-0.2, -0.4, -0.6, -0.8], [-1.0, 0.0, -PAD, float("nan")]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    scores = torch.tensor([2.0, -1.0])
    # k1 = logp - ref = [[0.1, 0.2, 0.3, 0.4], [0.5, -0.2, pad, pad]]; -0.5 * k1 on real tokens;
    # row 0 gets +2 at t=3, row 1 gets -1 at t=1; padding 0.
    expected = [[-0.05, -0.1, -0.15, -0.2 + 2.0], [-0.25, 0.1 - 1.0, 0.0, 0.0]]
    close(token_rewards(scores, logp, ref, 0.5, mask), expected)


def test_token_rewards_needs_a_real_token_per_row():
    with pytest.raises(ValueError, match="at least one real"):
        token_rewards(torch.ones(2), torch.zeros(2, 3), torch.zeros(2, 3), 0.1, torch.tensor([[1, 1, 0], [0, 0, 0]]))


# One token from policy p = [0.5, 0.25, 0.25] (logits theta = log p), reference q = [0.25, 0.5, 0.25].
# KL(p || q) = 0.5 ln 2 - 0.25 ln 2 + 0 = 0.25 ln 2; dKL/dtheta_j = p_j (ln(p_j / q_j) - KL):
#   0.5 (ln 2 - 0.1732868) = 0.2599302, 0.25 (-ln 2 - 0.1732868) = -0.2166085, 0.25 (0 - 0.1732868) = -0.0433217
P, Q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.5, 0.25])
GRAD_KL = [0.2599302, -0.2166085, -0.0433217]


def _expected_reward_gradient(penalty) -> torch.Tensor:
    """Score-function gradient E_x~p[R(x) grad log p(x)] of a per-token reward R, summed exactly
    over the three outcomes (one row each)."""
    theta = P.log().requires_grad_()
    logp = torch.log_softmax(theta, -1).unsqueeze(1)  # [3 outcomes, T=1]
    reward = penalty(logp.detach(), Q.log().unsqueeze(1)).squeeze(1)
    (P * reward * logp.squeeze(1)).sum().backward()
    return theta.grad


def test_k1_kl_reward_has_the_gradient_of_minus_kl():
    """The penalty PPO maximises must pull the policy toward the reference like -KL does."""
    grad = _expected_reward_gradient(lambda lp, ref: token_rewards(torch.zeros(3), lp, ref, 1.0, torch.ones(3, 1)))
    close(grad, [-g for g in GRAD_KL])
    # k3 as a reward would estimate the KL's value (E[k3] = KL) but not its gradient:
    # k3 = q/p - 1 - ln(q/p) = [0.1931472, 0.3068528, 0]; p_j (k3_j - KL) = [0.0099302, 0.0333915, -0.0433217].
    close(kl_penalty(P.log(), Q.log(), "k3") @ P, 0.25 * math.log(2))
    close(_expected_reward_gradient(lambda lp, ref: kl_penalty(lp, ref, "k3")), [0.0099302, 0.0333915, -0.0433217])


def test_sequence_kl_ignores_nonfinite_padding():
    logp = torch.tensor([[-1.0, -2.0, float("nan")], [-0.7, float("inf"), -float("inf")]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.7, 0.0, float("nan")]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    close(sequence_kl(logp, ref, mask, "k1"), [0.5 - 1.0, 0.0])
    close(sequence_kl(logp, ref, mask, "k3"), [0.1065307 + 0.7182818, 0.0])


def test_rollout_targets_by_hand_and_unaffected_by_padding():
    # Row 0 = the GAE example below (gamma 0.9, lam 0.8) with a k1 penalty of 0 and score 1;
    # row 1's padded position holds NaN/inf in every input.
    nan, inf = float("nan"), float("inf")
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, nan]])
    values = torch.tensor([[0.5, 0.4, 0.6], [0.5, 0.4, inf]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, advantages, returns = rollout_targets(torch.tensor([1.0, 1.0]), logp, logp.nan_to_num(), values, mask,
                                                   kl_coef=0.1, gamma=0.9, lam=0.8, whiten_advantages=False)
    close(rewards, [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    close(advantages, [[0.16816, 0.428, 0.4], [0.292, 0.6, 0.0]])
    close(returns, [[0.66816, 0.828, 1.0], [0.792, 1.0, 0.0]])


def test_whiten_rewards_whitens_token_rewards_without_shifting_their_mean():
    # trl's `whiten_rewards`: the per-token rewards (penalty + score), not the scores, keep their mean.
    # k1 penalties 0, rewards [[0, 0, 1], [0, 1, pad]]: mean 0.4, unbiased var 0.3 ->
    # (r - 0.4) / sqrt(0.3) + 0.4 = [-0.3302967, 1.4954451] for r = 0, 1.
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, _, _ = rollout_targets(torch.tensor([1.0, 1.0]), logp, logp, torch.zeros(2, 3), mask, 0.1, 1.0, 1.0,
                                    whiten_rewards=True)
    lo, hi = 0.4 - 0.4 / math.sqrt(0.3), 0.4 + 0.6 / math.sqrt(0.3)
    close(rewards, [[lo, lo, hi], [lo, hi, 0.0]])
    close(masked_mean(rewards, mask), 0.4)


def test_gae_by_hand_with_right_padded_row():
    # gamma = 0.9, lam = 0.8, so gamma * lam = 0.72; the value after the last real token is 0.
    # Row 0 (T=3), r = [0, 0, 1], V = [0.5, 0.4, 0.6]:
    #   d2 = 1 - 0.6 = 0.4                 A2 = 0.4
    #   d1 = 0 + 0.9*0.6 - 0.4 = 0.14      A1 = 0.14 + 0.72*0.4 = 0.428
    #   d0 = 0 + 0.9*0.4 - 0.5 = -0.14     A0 = -0.14 + 0.72*0.428 = 0.16816
    #   returns = A + V = [0.66816, 0.828, 1.0]
    # Row 1, r = [0, 1, pad], V = [0.5, 0.4, pad], mask [1, 1, 0]:
    #   d1 = 1 - 0.4 = 0.6                 A1 = 0.6
    #   d0 = 0.9*0.4 - 0.5 = -0.14         A0 = -0.14 + 0.72*0.6 = 0.292
    #   returns = [0.792, 1.0, 0]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, PAD]])
    values = torch.tensor([[0.5, 0.4, 0.6], [0.5, 0.4, PAD]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(advantages, [[0.16816, 0.428, 0.4], [0.292, 0.6, 0.0]])
    close(returns, [[0.66816, 0.828, 1.0], [0.792, 1.0, 0.0]])
    # The padded row equals the same row computed without padding.
    short_adv, _ = gae(rewards[1:, :2], values[1:, :2], mask[1:, :2], gamma=0.9, lam=0.8)
    close(advantages[1:, :2], short_adv)


def test_gae_monte_carlo_limit():
    # gamma = lam = 1: A_t = (sum of rewards from t on) - V_t.
    rewards = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    values = torch.tensor([[1.0, 1.0, 1.0, 5.0]])
    advantages, _ = gae(rewards, values, torch.tensor([[1, 1, 1, 0]]), gamma=1.0, lam=1.0)
    close(advantages, [[5.0, 4.0, 2.0, 0.0]])


# Four real tokens and one padded one; old logprobs 0 so ratio = exp(logprobs).
RATIOS = torch.tensor([[1.1, 1.5, 0.5, 1.5, 3.0]])
ADVANTAGES = torch.tensor([[1.0, 1.0, -1.0, -2.0, 100.0]])
PG_MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])


def test_policy_loss_clipped_and_unclipped_tokens():
    # eps = 0.2. Per token max(-A*r, -A*clip(r, 0.8, 1.2)):
    #   r=1.1, A=1:  max(-1.1, -1.1) = -1.1  (inside the range)
    #   r=1.5, A=1:  max(-1.5, -1.2) = -1.2  (clipped)
    #   r=0.5, A=-1: max(0.5, 0.8)   = 0.8   (clipped)
    #   r=1.5, A=-2: max(3.0, 2.4)   = 3.0   (pessimistic side, not clipped)
    # loss = (-1.1 - 1.2 + 0.8 + 3.0) / 4 = 0.375; clipfrac = 2/4.
    # approx_kl = 0.5 * mean(ln(r)^2) = 0.5 * (0.0090840 + 0.1644019 + 0.4804530 + 0.1644019) / 4
    logprobs = RATIOS.log().requires_grad_()
    loss, stats = policy_loss(logprobs, torch.zeros_like(RATIOS), ADVANTAGES, PG_MASK, clip_range=0.2)
    close(loss, 0.375)
    assert stats["clipfrac"] == pytest.approx(0.5)
    assert stats["approx_kl"] == pytest.approx(0.1022926, abs=1e-6)
    # d/dlogp of -A*r/4 is -A*r/4 where unclipped; clipped and padded tokens get no gradient.
    loss.backward()
    close(logprobs.grad, [[-1.1 / 4, 0.0, 0.0, 3.0 / 4, 0.0]])


def test_policy_loss_on_policy_is_minus_mean_advantage():
    loss, stats = policy_loss(torch.zeros(1, 5), torch.zeros(1, 5), ADVANTAGES, PG_MASK, clip_range=0.2)
    close(loss, -(1.0 + 1.0 - 1.0 - 2.0) / 4)  # ratio 1 everywhere: loss = -mean(A) = 0.25
    assert stats == {"clipfrac": 0.0, "approx_kl": 0.0}


def test_value_loss_clipping():
    # c = 0.2, old values 0:
    #   v=0.1, R=1: (0.9)^2 = 0.81 both ways
    #   v=0.5, R=1: unclipped 0.25, clipped v=0.2 -> 0.64; max 0.64 (clipped)
    #   v=0.5, R=0: unclipped 0.25, clipped 0.04; max 0.25
    # loss = 0.5 * (0.81 + 0.64 + 0.25) / 3 = 0.2833333; clipfrac = 1/3.
    values = torch.tensor([[0.1, 0.5, 0.5, 10.0]], requires_grad=True)
    returns = torch.tensor([[1.0, 1.0, 0.0, -10.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, stats = value_loss(values, torch.zeros_like(returns), returns, mask, clip_range_value=0.2)
    close(loss, 0.2833333)
    assert stats["clipfrac"] == pytest.approx(1 / 3)
    # d/dv of 0.5*(v-R)^2/3 = (v-R)/3 where unclipped; the clipped token gets none.
    loss.backward()
    close(values.grad, [[-0.9 / 3, 0.0, 0.5 / 3, 0.0]])


def test_entropy_uniform_and_known_distribution():
    close(entropy_from_logits(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7)))  # 1.9459101
    # p = [0.5, 0.25, 0.25]: H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2 = 1.0397208 (logits shift-invariant)
    logits = torch.tensor([[[0.5, 0.25, 0.25]]]).log() + 3.0
    close(entropy_from_logits(logits), [[1.0397208]])


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, PAD]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    assert explained_variance(returns.clone(), returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros_like(returns), returns, mask) == pytest.approx(0.0)
    # residual [0, 0, 0, -1]: var 0.1875; var(returns) = 1.25; 1 - 0.1875 / 1.25 = 0.85
    values = torch.tensor([[1.0, 2.0, 3.0, 5.0, 0.0]])
    assert explained_variance(values, returns, mask) == pytest.approx(0.85)


def test_fixed_kl_controller_does_not_move():
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=512)
    assert ctl.coef == 0.05


@pytest.mark.parametrize(
    "current_kl, expected",
    [
        (9.0, 0.100512),  # 9/6 - 1 = 0.5 -> clipped to 0.2: 0.1 * (1 + 0.2 * 256 / 10000)
        (6.6, 0.100256),  # 6.6/6 - 1 = 0.1: 0.1 * (1 + 0.1 * 256 / 10000)
        (6.0, 0.1),  # on target
        (3.0, 0.099488),  # 3/6 - 1 = -0.5 -> clipped to -0.2: 0.1 * (1 - 0.2 * 256 / 10000)
    ],
)
def test_adaptive_kl_controller(current_kl, expected):
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=current_kl, n_steps=256)
    assert ctl.coef == pytest.approx(expected, rel=1e-9)


def test_missing_eos_penalty_subtracts_or_replaces():
    scores, has_eos = torch.tensor([2.5, 2.5, -0.3]), torch.tensor([True, False, False])
    close(penalize_missing_eos(scores, has_eos, 1.0, "subtract"), [2.5, 1.5, -1.3])
    close(penalize_missing_eos(scores, has_eos, 1.0, "replace"), [2.5, -1.0, -1.0])
    assert penalize_missing_eos(scores, has_eos, None, "replace") is scores
    with pytest.raises(ValueError, match="'clip' is not one of subtract, replace"):
        penalize_missing_eos(scores, has_eos, 1.0, "clip")


@pytest.mark.parametrize(
    "schedule, warmup, expected",
    [
        ("constant", 0, [1.0, 1.0, 1.0, 1.0]),
        ("linear", 0, [1.0, 0.75, 0.5, 0.25]),  # N+: 1 - (it - 1) / 4 for it = 1..4
        ("constant", 2, [0.1, 0.55, 1.0, 1.0]),  # from 0.1x: 0.1 + 0.9 * i / 2 while i < 2
        ("linear", 2, [0.1, 0.75 * 0.55, 0.5, 0.25]),
    ],
)
def test_lr_factor_by_hand(schedule, warmup, expected):
    assert [lr_factor(i, 4, schedule, warmup, 0.1) for i in range(4)] == pytest.approx(expected, rel=1e-12)
