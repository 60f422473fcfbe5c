"""Forgetting deltas and the gate, from per-item paired differences against a reference model.

Works on lm-eval results JSON with per-item scores (`forgetting.evaluate_model`). Each entry of
lm-eval's results that is no group's subtask (a task, or a group such as MMLU as one score) is
gated on one primary metric; a group's subtasks are shown, not gated. Deltas are in points
(100 x the metric's difference), signed as node - reference.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence, Tuple, Union

from alignlab.errors import AlignlabError, ConfigError
from alignlab.stats import PairedDelta, paired_delta_ci

log = logging.getLogger("alignlab.eval")
GATE_MODES = ("warn", "fail")


class ForgettingGateError(AlignlabError):
    """A node lost more benchmark score than its `max_drop` allows, beyond noise (gate: fail);
    `violations` lists them as `check_gate` returns them."""

    violations: Sequence[dict] = ()


def _metric_names(entry: Mapping) -> List[str]:
    """Metric names of one results entry in lm-eval's order: `acc` (filter none), `exact_match,strict-match`."""
    names = []
    for key in entry:
        metric, sep, filter_name = key.partition(",")
        if sep and not metric.endswith("_stderr"):
            names.append(metric if filter_name == "none" else key)
    return names


def _split(metric: str) -> Tuple[str, str]:
    name, _, filter_name = metric.partition(",")
    return name, filter_name or "none"


def stderr_key(metric: str) -> str:
    """The compact name of a metric's stderr: `acc_stderr`, `exact_match_stderr,strict-match`."""
    name, sep, filter_name = metric.partition(",")
    return f"{name}_stderr{sep}{filter_name}"


def _leaves(results: Mapping, task: str) -> List[str]:
    """The tasks whose items make up `task` (itself, or every task under a group)."""
    children = results.get("group_subtasks", {}).get(task)
    return [leaf for child in children for leaf in _leaves(results, child)] if children else [task]


def primary_metrics(results: Mapping, chosen: Optional[Mapping[str, str]] = None) -> Dict[str, dict]:
    """{entry: {metric, higher_is_better, gated}} for every scored entry of lm-eval `results`.

    Top-level entries (no group's subtask) are gated; subtasks follow their group, shown only.
    The metric is `chosen[entry]` (eval.metrics), else the group's, else lm-eval's first for the
    entry; its direction is lm-eval's `higher_is_better`.
    """
    chosen = dict(chosen or {})
    scores = results["results"]
    groups = results.get("group_subtasks", {})
    subtasks = {child for children in groups.values() for child in children}
    primary: Dict[str, dict] = {}

    def add(task: str, inherited: Optional[str], gated: bool) -> None:
        names = _metric_names(scores[task])
        if not names and task in groups:  # a group without an aggregate score: its tasks count on their own
            for child in groups[task]:
                add(child, None, gated)
            return
        metric = chosen.get(task) or (inherited if inherited in names else names[0] if names else None)
        if metric not in names:
            raise ConfigError(f"eval.metrics.{task}: no metric '{metric}' in lm-eval's results of {task} "
                              f"(have: {', '.join(names) or 'none'})")
        direction = results.get("higher_is_better", {}).get(task, {}).get(_split(metric)[0], True)
        primary[task] = {"metric": metric, "higher_is_better": bool(direction), "gated": gated}
        for child in groups.get(task, []):
            if child in scores:
                add(child, metric, False)

    for task in scores:
        if task not in subtasks:
            add(task, None, True)
    return primary


def item_values(results: Mapping, task: str, metric: str) -> Dict[Tuple[str, int], float]:
    """{(task, doc_id): score} of `metric` on every item of `task` (a group: of all its tasks)."""
    name, filter_name = _split(metric)
    values = {}
    for leaf in _leaves(results, task):
        for sample in results["samples"][leaf]:
            if sample["filter"] != filter_name:
                continue
            value = sample[name]
            if not isinstance(value, (int, float)):
                raise ConfigError(f"eval.metrics.{task}: '{metric}' has no per-item score (lm-eval aggregates "
                                  "it over the corpus); pick a metric averaged over items, such as acc")
            values[leaf, sample["doc_id"]] = float(value)
    reported = results["results"][task].get(f"{name},{filter_name}")
    if values and isinstance(reported, (int, float)) and abs(sum(values.values()) / len(values) - reported) > 1e-6:
        raise ConfigError(f"eval.metrics.{task}: '{metric}' ({reported:.4f}) is not the mean of its items' scores; "
                          "paired deltas need a metric averaged over items (a group: weighted by size)")
    return values


def paired_delta(reference: Mapping, results: Mapping, task: str, metric: str, confidence: float) -> PairedDelta:
    """The paired delta of `metric` on `task` from `reference` to `results`, items matched by doc_id."""
    before, after = item_values(reference, task, metric), item_values(results, task, metric)
    if set(before) != set(after) or not before:
        raise AlignlabError(f"forgetting check {task}: the model and its reference were scored on different items "
                            f"({len(before)} vs {len(after)}); evaluate both with the same eval settings")
    items = sorted(before)
    return paired_delta_ci([before[i] for i in items], [after[i] for i in items], confidence)


def _score(results: Optional[Mapping], task: str, metric: str) -> Optional[float]:
    if results is None:
        return None
    name, filter_name = _split(metric)
    value = results["results"].get(task, {}).get(f"{name},{filter_name}")
    return float(value) if isinstance(value, (int, float)) else None


def deltas(base: Mapping, node: Mapping, parent: Optional[Mapping], primary: Mapping[str, dict],
           confidence: float = 0.95) -> List[dict]:
    """One row per entry of `primary`: {task, metric, higher_is_better, gated, base, parent, node,
    vs_base, vs_parent}; `vs_*` are PairedDelta dicts {delta, se, lo, hi, n} (vs_parent None without a parent)."""
    rows = []
    for task, p in primary.items():
        metric = p["metric"]
        vs_parent = None if parent is None else dataclasses.asdict(paired_delta(parent, node, task, metric, confidence))
        rows.append({"task": task, **p, "base": _score(base, task, metric), "parent": _score(parent, task, metric),
                     "node": _score(node, task, metric),
                     "vs_base": dataclasses.asdict(paired_delta(base, node, task, metric, confidence)),
                     "vs_parent": vs_parent})
    return rows


def _limit(max_drop: Union[float, Mapping], task: str) -> Optional[float]:
    if isinstance(max_drop, Mapping):
        return max_drop.get(task, max_drop.get("default"))
    return max_drop


def check_gate(node: str, rows: List[dict], max_drop: Union[float, Mapping], mode: str = "warn",
               confidence: float = 0.95) -> List[dict]:
    """Gated rows (of `deltas`) where `node` got worse than the base by more than `max_drop` points
    AND the delta's confidence interval excludes zero.

    `max_drop` is one limit for all tasks or {task: points} with an optional `default`; tasks
    with no limit are not checked. Returns the violations {node, task, metric, before, after,
    delta, lo, hi, n, confidence, max_drop}; logs them (warn) or raises ForgettingGateError (fail).
    """
    if mode not in GATE_MODES:
        raise ConfigError(f"forgetting gate '{mode}' is not one of {', '.join(GATE_MODES)}")
    violations = []
    for row in rows:
        limit = _limit(max_drop, row["task"])
        if not row["gated"] or limit is None:
            continue
        d = PairedDelta(**row["vs_base"])
        worse_by = -d.delta if row["higher_is_better"] else d.delta
        if worse_by > limit and d.excludes_zero():
            violations.append({"node": node, "task": row["task"], "metric": row["metric"], "before": row["base"],
                               "after": row["node"], "delta": d.delta, "lo": d.lo, "hi": d.hi, "n": d.n,
                               "confidence": confidence, "max_drop": limit})
    messages = [
        f"node '{v['node']}' forgot on {v['task']}: {v['metric']} {v['before']:.4f} -> {v['after']:.4f} "
        f"({v['delta']:+.2f} points, {v['confidence']:.0%} CI [{v['lo']:+.2f}, {v['hi']:+.2f}], n={v['n']}; "
        f"max drop {v['max_drop']:g})"
        for v in violations
    ]
    if messages and mode == "fail":
        err = ForgettingGateError("; ".join(messages))
        err.violations = violations
        raise err
    for message in messages:
        log.warning(message)
    return violations
