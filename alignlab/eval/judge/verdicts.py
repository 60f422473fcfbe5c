"""Verdict parsing and swap-debiased aggregation of pairwise judgements.

A judgement is the judge's probabilities of A, B and C (tie): read from its next-token
distribution where the backend can (logprobs), else one-hot from the parsed reply text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from alignlab.stats import bootstrap_mean_ci, wilson_interval

VERDICTS = ("A", "B", "tie")
OPTIONS = ("A", "B", "C")  # the verdict letters: C is FastChat's tie

# FastChat's format; a "[[A]]" followed by "if"/"for" restates the instructions and is no verdict.
_STRICT = re.compile(r"\[\[\s*([ABC])\s*\]\](?!\s*[\"']?\s*(?:if|for)\b)", re.IGNORECASE)
_ONLY = r"(?:(?i:assistant|answer|response|model)\s+)?"  # optional noun before a capital letter
_LOOSE = [  # (pattern, what its group means); letters are capitals only ("a close call" is no verdict)
    (re.compile(r"(?<!\[)\[\s*([ABC])\s*\](?!\])"), "letter"),  # [A]
    (re.compile(r"(?i:verdict|winner|decision|choice)\s*(?::|(?i:is))\s*[\"'\[]?\s*" + _ONLY + r"([ABC])\b"), "letter"),
    (re.compile(_ONLY + r"\b([AB])(?:'s\s+(?i:answer|response))?\s+(?i:is|was)\s+(?i:(?:clearly|slightly|much|far|"
                r"somewhat)\s+)?(?i:better|superior|preferable|preferred|more\s+helpful|the\s+(?:better\s+one|"
                r"better|winner|stronger))\b"), "letter"),
    (re.compile(_ONLY + r"\b([AB])\s+(?i:wins|is\s+the\s+winner)\b"), "letter"),
    (re.compile(r"(?i:\bI\s+prefer|\bprefer(?:red)?\s+is)\s+" + _ONLY + r"([AB])\b"), "letter"),
    (re.compile(_ONLY + r"\b([AB])\s+(?i:is|was)\s+(?i:worse|weaker|inferior)\b"), "other"),
    (re.compile(r"(?i:\b(?:a\s+)?tie\b|\bequally\s+(?:good|bad|helpful)\b|\bneither\s+is\s+better\b)"), "tie"),
]
_NEGATION = re.compile(r"(?i:\b(?:not|no|never|cannot|\w+n't)\s+(?:\w+\s+)?$)")


def parse_verdict(text: Optional[str]) -> Optional[str]:
    """"A", "B" or "tie" from a judge reply; None (unparseable) when it holds no verdict or
    conflicting ones. FastChat's [[A]]/[[B]]/[[C]] decide when present; otherwise the loose
    forms ("Assistant B is better", "[A]", "winner: B", "a tie") count only if they all agree."""
    if not text:
        return None
    strict = {_norm(m) for m in _STRICT.findall(text)}
    if strict:
        return strict.pop() if len(strict) == 1 else None
    claims = set()
    for pattern, meaning in _LOOSE:
        for match in pattern.finditer(text):
            if _NEGATION.search(text[max(0, match.start() - 30):match.start()]):
                continue  # "not a tie", "is not Assistant A"
            if meaning == "tie":
                claims.add("tie")
            else:
                token = _norm(match.group(1))
                claims.add(token if meaning == "letter" else {"A": "B", "B": "A"}[token])
    return claims.pop() if len(claims) == 1 else None


def _norm(token: str) -> str:
    token = token.upper()
    return "tie" if token in ("C", "TIE") else token


@dataclass(frozen=True)
class Judgement:
    """P(A better), P(B better) and P(tie) of one judge call (sum 1)."""

    a: float
    b: float
    tie: float

    @classmethod
    def of(cls, probs: Optional[Dict[str, float]], text: Optional[str]) -> Optional["Judgement"]:
        """From the backend's probabilities of A, B, C when it read them, else one-hot from the
        parsed text; None when neither gives a verdict."""
        if probs:
            total = sum(probs.get(o, 0.0) for o in OPTIONS)
            if total > 0:
                return cls(*(probs.get(o, 0.0) / total for o in OPTIONS))
        verdict = parse_verdict(text)
        if verdict is None:
            return None
        return cls(*(float(verdict == v) for v in VERDICTS))

    @property
    def a_share(self) -> float:
        """P(A) renormalised over A and B (0.5 when the judge gives both nothing)."""
        return self.a / (self.a + self.b) if self.a + self.b > 0 else 0.5


def swap_debiased(x_first: Judgement, x_second: Judgement, tie_margin: float) -> Dict[str, object]:
    """One prompt judged twice, X as Assistant A (`x_first`) and X as Assistant B (`x_second`).

    P(X better) = ½[P(A | X first) + P(B | X second)] renormalised over the two models; the tie
    mass is the mean P(C). Outcome: win above 0.5 + tie_margin, loss below 0.5 − tie_margin, else
    tie. Consistent: both orders lean to the same model (or both exactly even).
    """
    x = (x_first.a + x_second.b) / 2
    y = (x_first.b + x_second.a) / 2
    p = x / (x + y) if x + y > 0 else 0.5
    outcome = "win" if p > 0.5 + tie_margin else "loss" if p < 0.5 - tie_margin else "tie"
    lean = lambda share: (share > 0.5) - (share < 0.5)  # noqa: E731  +1: the model shown as A
    consistent = lean(x_first.a_share) == -lean(x_second.a_share)
    return {"p_better": p, "tie_mass": (x_first.tie + x_second.tie) / 2, "outcome": outcome, "consistent": consistent}


def summarise(prompts: Sequence[Optional[Dict[str, object]]], a_shares: List[float], confidence: float = 0.95,
              seed: int = 0) -> Dict[str, object]:
    """Per comparison: mean P(X better) with a bootstrap CI over prompts (both orders of a prompt
    resampled together), win/tie/loss counts with Wilson intervals, tie mass, position bias
    (mean P(A) − 0.5 over the judgements) and consistency. `prompts`: swap_debiased results,
    None for an unparseable prompt; `a_shares`: P(A) of every parsed judgement."""
    parsed = [p for p in prompts if p is not None]
    n = len(parsed)
    counts = {k: sum(p["outcome"] == k for p in parsed) for k in ("win", "tie", "loss")}
    p_better = [p["p_better"] for p in parsed]
    result: Dict[str, object] = {
        "p_better": sum(p_better) / n if n else None,
        "p_better_ci": list(bootstrap_mean_ci(p_better, confidence, seed=seed)) if n else None,
        **counts, "unparseable": len(prompts) - n, "n": n, "confidence": confidence,
    }
    for rate, key in (("win_rate", "win"), ("tie_rate", "tie"), ("loss_rate", "loss")):
        result[rate] = counts[key] / n if n else None
        result[f"{rate}_ci"] = list(wilson_interval(counts[key], n, confidence))
    result["tie_mass"] = sum(p["tie_mass"] for p in parsed) / n if n else None
    result["position_bias"] = sum(a_shares) / len(a_shares) - 0.5 if a_shares else None
    result["consistency"] = sum(p["consistent"] for p in parsed) / n if n else None
    return result
