"""Interval estimates of alignlab.stats against hand-computed values."""
from __future__ import annotations

import math

import pytest

from alignlab.stats import bootstrap_mean_ci, wilson_interval


def test_wilson_interval_hand_computed():
    # 2 of 4 at 95%: z = 1.959964, z^2/n = 0.960365, centre = (0.5 + z^2/8) / (1 + z^2/4) = 0.5,
    # half = z * sqrt(0.25/4 + z^2/64) / (1 + z^2/4) = 1.959964 * 0.350033 / 1.960365 = 0.349961
    lo, hi = wilson_interval(2, 4, 0.95)
    assert lo == pytest.approx(0.150039, abs=1e-5) and hi == pytest.approx(0.849961, abs=1e-5)
    # 7 of 10: the textbook interval (0.3968, 0.8922)
    assert wilson_interval(7, 10) == pytest.approx((0.39678, 0.89221), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 5)
    assert lo == 0.0 and hi == pytest.approx(1.959964**2 / 5 / (1 + 1.959964**2 / 5), abs=1e-5)


def test_bootstrap_mean_ci_hand_computed():
    assert bootstrap_mean_ci([0.25, 0.25, 0.25]) == (0.25, 0.25)  # no spread, no interval
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))
    # Two values 0 and 1: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the
    # 40% interval (quantiles 0.3 and 0.7) is [0.5, 0.5] and the 95% interval [0, 1].
    assert bootstrap_mean_ci([0.0, 1.0], 0.40) == (0.5, 0.5)
    assert bootstrap_mean_ci([0.0, 1.0], 0.95) == (0.0, 1.0)
    # 100 values, half 0 and half 1: the resampled mean is ~ Normal(0.5, 0.05); 95% ~ 0.5 -+ 1.96 * 0.05.
    lo, hi = bootstrap_mean_ci([0.0, 1.0] * 50, 0.95, resamples=4000, seed=3)
    assert lo == pytest.approx(0.402, abs=0.02) and hi == pytest.approx(0.598, abs=0.02)
    assert bootstrap_mean_ci([0.0, 1.0] * 50, seed=3) == bootstrap_mean_ci([0.0, 1.0] * 50, seed=3)  # seeded
