"""Experiment tracking: one W&B run per pipeline node plus a local metrics.jsonl.

The `logger` group configures it; `backend: none` keeps only metrics.jsonl.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Dict, Optional

from transformers import TrainerCallback

_SECRET = re.compile(
    r"(api[_-]?key|secret|password|passwd|credential|auth|^token$|access[_-]?token|hub[_-]?token)", re.IGNORECASE
)
REDACTED = "***"


def redact(value: Any) -> Any:
    """Copy of a config tree with every secret-looking key's value replaced."""
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET.search(str(k)) and v is not None else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


class NodeTracker:
    """Logs one node's metrics to metrics.jsonl and (unless disabled) its own W&B run."""

    def __init__(self, logger_cfg, experiment: str, node: str, stage: str, config: Dict[str, Any], run_dir: Path, metrics_path: Path):
        self.metrics_path = metrics_path
        self.run = None
        if logger_cfg.backend == "wandb" and logger_cfg.mode != "disabled":
            import wandb

            self.run = wandb.init(
                project=logger_cfg.project,
                entity=logger_cfg.entity,
                group=logger_cfg.group or experiment,
                job_type=stage,
                name=node,
                tags=list(logger_cfg.tags),
                config=redact(config),
                mode=logger_cfg.mode,
                dir=str(run_dir),
                reinit="finish_previous",
            )
        elif logger_cfg.backend not in ("wandb", "none"):
            raise ValueError(f"logger.backend '{logger_cfg.backend}' is not one of wandb, none")

    def log(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not clean:
            return
        record = {"step": step, "time": time.time(), **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.run is not None:
            self.run.log(clean, step=step)

    def summary(self, metrics: Dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})

    def finish(self, ok: bool = True) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)
            self.run = None

    def callback(self) -> TrainerCallback:
        """A transformers callback forwarding the trainer's logs here (on the main process)."""
        tracker = self

        class _Forward(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and logs:
                    tracker.log(logs, step=state.global_step)

        return _Forward()
