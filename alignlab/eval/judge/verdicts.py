"""Verdict parsing and position-swap aggregation of pairwise judgements."""
from __future__ import annotations

import math
import re
from statistics import NormalDist
from typing import Dict, Iterable, Optional, Tuple

# FastChat's format first; then looser forms small judges produce. The LAST match wins: judges
# often restate the format ("output [[A]] if ...") before giving their own verdict.
_STRICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_LOOSE = re.compile(
    r"\[\s*([ABC])\s*\]"  # [A]
    r"|(?:verdict|winner|better)\W{0,4}(?:is\W{0,3})?(?:assistant\s+)?([ABC])\b"  # verdict: A / winner is B
    r"|\bassistant\s+([AB])\s+is\s+(?:better|the\s+winner)"  # Assistant A is better
    r"|\b(tie)\b",
    re.IGNORECASE,
)
VERDICTS = ("A", "B", "tie")


def parse_verdict(text: Optional[str]) -> Optional[str]:
    """"A", "B" or "tie" from a judge reply; None when no verdict can be read (or no reply)."""
    if not text:
        return None
    strict = _STRICT.findall(text)
    if strict:
        return _norm(strict[-1])
    loose = [next(g for g in m.groups() if g) for m in _LOOSE.finditer(text)]
    return _norm(loose[-1]) if loose else None


def _norm(token: str) -> str:
    token = token.upper()
    return "tie" if token in ("C", "TIE") else token


def combine(first: Optional[str], swapped: Optional[str]) -> Tuple[str, bool]:
    """Outcome for model X of one prompt judged twice: X as A (`first`), then X as B (`swapped`).

    Returns (outcome, consistent): outcome is win, loss, tie or unparseable; a verdict counts
    only when both orders agree, otherwise the pair is an (inconsistent) tie.
    """
    if first is None or swapped is None:
        return "unparseable", False
    x_first = {"A": "win", "B": "loss", "tie": "tie"}[first]
    x_swapped = {"A": "loss", "B": "win", "tie": "tie"}[swapped]
    if x_first == x_swapped:
        return x_first, True
    return "tie", False


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


def tally(outcomes: Iterable[Tuple[str, bool]], confidence: float = 0.95) -> Dict[str, object]:
    """Win/tie/loss counts, win and loss rates with Wilson intervals over the parseable pairs,
    the unparseable count, and the position-consistency rate."""
    counts = {"win": 0, "tie": 0, "loss": 0, "unparseable": 0}
    consistent = 0
    for outcome, agrees in outcomes:
        counts[outcome] += 1
        consistent += agrees
    n = counts["win"] + counts["tie"] + counts["loss"]
    result: Dict[str, object] = {**counts, "n": n, "confidence": confidence}
    for rate, key in (("win_rate", "win"), ("loss_rate", "loss")):
        result[rate] = counts[key] / n if n else None
        result[f"{rate}_ci"] = list(wilson_interval(counts[key], n, confidence))
    result["consistency"] = consistent / n if n else None
    return result
