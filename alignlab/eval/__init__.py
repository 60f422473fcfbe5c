"""Catastrophic-forgetting checks: bundled lm-eval tasks on the local benchmark mirror.

`evaluate_model` runs lm-eval on an in-memory model and returns its results with per-item
scores; `primary_metrics` picks each task's gated metric; `deltas` tabulates a node's paired
deltas (with confidence intervals) against the base and its parent; `check_gate` flags (or, in
fail mode, stops on) drops larger than the configured points whose interval excludes zero.
"""
from alignlab.eval.config import ForgettingConfig
from alignlab.eval.forgetting import TASKS_DIR, compact_scores, evaluate_model, mmlu_subjects
from alignlab.eval.gate import ForgettingGateError, check_gate, deltas, primary_metrics

__all__ = [
    "ForgettingConfig",
    "ForgettingGateError",
    "TASKS_DIR",
    "check_gate",
    "compact_scores",
    "deltas",
    "evaluate_model",
    "mmlu_subjects",
    "primary_metrics",
]
