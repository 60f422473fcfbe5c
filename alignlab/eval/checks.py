"""Forgetting checks inside a pipeline run: the base model once, then every generative node,
each compared with the base and with its parent node, and gated on `max_drop`.

Scores are cached next to the stage cache (`<cache>/forgetting/<key>.json`, lm-eval's results
JSON), keyed by what was evaluated (base model config or node key) and the eval config.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

from alignlab.eval.forgetting import compact_scores, evaluate_model
from alignlab.eval.gate import check_gate, deltas



class ForgettingChecks:
    """Evaluates the base and each generative node; `section` is summary.json's `forgetting`."""

    def __init__(self, cfg, cache_dir: Path, data_home: str):
        self.cfg = cfg
        self.eval_cfg = cfg.eval
        self.dir = cache_dir / "forgetting"
        self.data_home = data_home
        self.scores: Dict[str, Dict[str, Any]] = {}
        e = OmegaConf.to_container(cfg.eval, resolve=True)
        self.section: Dict[str, Any] = {
            "tasks": e["tasks"], "limit": e["limit"], "num_fewshot": e["num_fewshot"],
            "max_drop": e["max_drop"], "gate": e["gate"], "base": None, "nodes": {}, "violations": [],
        }

    def _evaluate(self, identity: Dict[str, Any], load) -> Dict[str, Any]:
        settings = OmegaConf.to_container(self.eval_cfg, resolve=True)
        for judged_later in ("gate", "max_drop", "enabled"):  # they do not change the scores
            settings.pop(judged_later)
        payload = {"what": identity, "eval": settings}
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
        path = self.dir / f"{key}.json"
        if path.is_file():
            return compact_scores(json.loads(path.read_text()))
        model, tokenizer = load()
        tmp = path.with_name(f"{key}.tmp-{os.getpid()}.json")
        scores = evaluate_model(model, tokenizer, self.eval_cfg, self.data_home, tmp)
        os.replace(tmp, path)
        return scores

    def base(self, identity: Dict[str, Any], load) -> None:
        """`identity` names the base model; `load()` gives (model, tokenizer) on a cache miss."""
        self.scores["base"] = self._evaluate(identity, load)
        self.section["base"] = self.scores["base"]

    def node(self, name: str, identity: Dict[str, Any], load, parent: Optional[str]) -> None:
        """Evaluate a finished node, tabulate deltas, and apply the gate (fail mode raises)."""
        scores = self._evaluate(identity, load)
        self.scores[name] = scores
        parent_scores = self.scores.get(parent) if parent else None
        self.section["nodes"][name] = {
            "scores": scores,
            "parent": parent,
            "deltas": deltas(self.scores["base"], scores, parent_scores),
        }
        violations = check_gate(name, scores, self.scores["base"], dict(self.eval_cfg.max_drop), self.eval_cfg.gate)
        self.section["violations"].extend(violations)
