"""Statistics behind alignlab's verdicts: paired deltas of benchmark scores (the forgetting gate),
Wilson score intervals of proportions and percentile-bootstrap intervals of means (the judge and
its calibration)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional, Sequence, Tuple


def _z(confidence: float) -> float:
    """Two-sided normal quantile of `confidence`."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class PairedDelta:
    """Mean of after - before over paired items, in points (the scores times `scale`), with its
    standard error and a normal-approximation confidence interval; se, lo and hi are None below 2 items."""

    delta: float
    se: Optional[float]
    lo: Optional[float]
    hi: Optional[float]
    n: int

    def excludes_zero(self) -> bool:
        return self.lo is not None and (self.lo > 0 or self.hi < 0)


def paired_delta_ci(before: Sequence[float], after: Sequence[float], confidence: float = 0.95,
                    scale: float = 100.0) -> PairedDelta:
    """Paired difference of two score lists over the same items in the same order.

    se = sd(after - before) / sqrt(n) (sample sd, n - 1), interval delta ± z * se with z the
    two-sided normal quantile of `confidence`.
    """
    if len(before) != len(after) or not before:
        raise ValueError(f"paired scores need the same items: {len(before)} before, {len(after)} after")
    n = len(before)
    diffs = [scale * (a - b) for b, a in zip(before, after)]
    delta = sum(diffs) / n
    if n < 2:
        return PairedDelta(delta, None, None, None, n)
    se = math.sqrt(sum((d - delta) ** 2 for d in diffs) / (n - 1) / n)
    half = _z(confidence) * se
    return PairedDelta(delta, se, delta - half, delta + half, n)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
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
