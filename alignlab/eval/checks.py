"""Forgetting checks inside a pipeline run: the base model once, then every generative node,
each compared item by item with the base and with its parent node, and gated on `max_drop` and
the delta's confidence interval.

Results are cached next to the stage cache (`<cache>/forgetting/<key>.json`, lm-eval's results
JSON with per-item scores), keyed by what was evaluated (base model config or node key) and the
eval settings that change scores.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

from alignlab.eval.forgetting import compact_scores, evaluate_model
from alignlab.eval.gate import ForgettingGateError, check_gate, deltas, primary_metrics
from alignlab.record import Delta, ForgettingNode, ForgettingRecord, PrimaryMetric, Violation, from_dict

RESULTS_FORMAT = 2  # 2: with per-item scores


class ForgettingChecks:
    """Evaluates the base and each generative node; `section` is summary.json's `forgetting`."""

    def __init__(self, cfg, cache_dir: Path, data_home: str):
        self.cfg = cfg
        self.eval_cfg = cfg.eval
        self.dir = cache_dir / "forgetting"
        self.data_home = data_home
        self.results: Dict[str, Dict[str, Any]] = {}
        self.primary: Dict[str, dict] = {}
        e = OmegaConf.to_container(cfg.eval, resolve=True)
        self.section = ForgettingRecord(
            tasks=e["tasks"], limit=e["limit"], num_fewshot=e["num_fewshot"], max_drop=e["max_drop"], gate=e["gate"],
            confidence=e["confidence"], metrics={}, base=None, nodes={}, violations=[])

    def _evaluate(self, identity: Dict[str, Any], load) -> Dict[str, Any]:
        settings = OmegaConf.to_container(self.eval_cfg, resolve=True)
        for judged_later in ("gate", "max_drop", "enabled", "metrics", "confidence", "reward_kl"):  # not scores
            settings.pop(judged_later)
        payload = {"what": identity, "eval": settings, "format": RESULTS_FORMAT}
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
        path = self.dir / f"{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
        model, tokenizer = load()
        tmp = path.with_name(f"{key}.tmp-{os.getpid()}.json")
        results = evaluate_model(model, tokenizer, self.eval_cfg, self.data_home, tmp)
        os.replace(tmp, path)
        return results

    def base(self, identity: Dict[str, Any], load) -> None:
        """`identity` names the base model; `load()` gives (model, tokenizer) on a cache miss."""
        self.results["base"] = self._evaluate(identity, load)
        self.primary = primary_metrics(self.results["base"], dict(self.eval_cfg.metrics))
        self.section.base = compact_scores(self.results["base"])
        self.section.metrics = {task: PrimaryMetric(**p) for task, p in self.primary.items()}

    def node(self, name: str, identity: Dict[str, Any], load, parent: Optional[str]) -> None:
        """Evaluate a finished node, tabulate paired deltas, and apply the gate (fail mode raises)."""
        results = self._evaluate(identity, load)
        self.results[name] = results
        rows = deltas(self.results["base"], results, self.results.get(parent) if parent else None, self.primary,
                      self.eval_cfg.confidence)
        self.section.nodes[name] = ForgettingNode(scores=compact_scores(results), parent=parent,
                                                  deltas=[from_dict(Delta, row) for row in rows])
        try:
            violations = check_gate(name, rows, dict(self.eval_cfg.max_drop), self.eval_cfg.gate,
                                    self.eval_cfg.confidence)
        except ForgettingGateError as err:
            self.section.violations.extend(Violation(**v) for v in err.violations)
            raise
        self.section.violations.extend(Violation(**v) for v in violations)
