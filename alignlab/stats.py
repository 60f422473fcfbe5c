"""Interval estimates shared by the judge and its calibration: Wilson score intervals of
proportions and percentile-bootstrap intervals of means."""
from __future__ import annotations

import math
import random
from statistics import NormalDist
from typing import Sequence, Tuple


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact bounds, free of rounding
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return lo, hi


def bootstrap_mean_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (items resampled with replacement,
    seeded); (nan, nan) when there are no values."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    return means[int(tail * (resamples - 1))], means[int(math.ceil((1 - tail) * (resamples - 1)))]
