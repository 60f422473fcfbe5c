"""Forgetting deltas and the gate: score drops in absolute percentage points against a reference."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Optional, Union

from alignlab.errors import AlignlabError, ConfigError

log = logging.getLogger("alignlab.eval")
GATE_MODES = ("warn", "fail")


class ForgettingGateError(AlignlabError):
    """A node lost more benchmark score than its `max_drop` allows (gate: fail)."""


def _points(before: Optional[float], after: Optional[float]) -> Optional[float]:
    """after - before in percentage points, rounded so hand-computed limits compare exactly."""
    if before is None or after is None:
        return None
    return round((after - before) * 100.0, 6)


def _is_score(metric: str) -> bool:
    return "_stderr" not in metric


def deltas(base_scores: Mapping, node_scores: Mapping, parent_scores: Optional[Mapping] = None) -> list:
    """One row per (task, metric) of `node_scores` (stderrs left out):

    {task, metric, base, parent, node, vs_base, vs_parent}; the `vs_*` columns are
    node - reference in percentage points, None where the reference lacks the score.
    """
    rows = []
    for task, metrics in node_scores.items():
        for metric, value in metrics.items():
            if not _is_score(metric):
                continue
            base = base_scores.get(task, {}).get(metric)
            parent = (parent_scores or {}).get(task, {}).get(metric)
            rows.append({
                "task": task, "metric": metric, "base": base, "parent": parent, "node": value,
                "vs_base": _points(base, value), "vs_parent": _points(parent, value),
            })
    return rows


def _limit(max_drop: Union[float, Mapping], task: str) -> Optional[float]:
    if isinstance(max_drop, Mapping):
        return max_drop.get(task, max_drop.get("default"))
    return max_drop


def check_gate(node: str, scores: Mapping, reference_scores: Mapping,
               max_drop: Union[float, Mapping], mode: str = "warn") -> list:
    """Scores of `node` that dropped by more than `max_drop` points below `reference_scores`.

    `max_drop` is one limit for all tasks or {task: points} with an optional `default`;
    tasks with no limit are not checked. Returns the violations as dicts {node, task,
    metric, before, after, delta, max_drop}; logs them (warn) or raises ForgettingGateError (fail).
    """
    if mode not in GATE_MODES:
        raise ConfigError(f"forgetting gate '{mode}' is not one of {', '.join(GATE_MODES)}")
    violations = []
    for task, metrics in scores.items():
        limit = _limit(max_drop, task)
        if limit is None:
            continue
        for metric, after in metrics.items():
            if not _is_score(metric):
                continue
            before = reference_scores.get(task, {}).get(metric)
            delta = _points(before, after)
            if delta is not None and -delta > limit:
                violations.append({"node": node, "task": task, "metric": metric, "before": before,
                                   "after": after, "delta": delta, "max_drop": limit})
    messages = [
        f"node '{v['node']}' forgot on {v['task']}: {v['metric']} {v['before']:.4f} -> {v['after']:.4f} "
        f"({v['delta']:+.2f} points, max drop {v['max_drop']:g})"
        for v in violations
    ]
    if messages and mode == "fail":
        raise ForgettingGateError("; ".join(messages))
    for message in messages:
        log.warning(message)
    return violations
