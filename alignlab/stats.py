"""Statistics behind alignlab's verdicts."""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional, Sequence


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
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * se
    return PairedDelta(delta, se, delta - half, delta + half, n)
