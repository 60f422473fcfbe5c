"""Experiment tracking: one W&B run per pipeline node plus a local metrics.jsonl.

The `logger` group configures it; `backend: none` keeps only metrics.jsonl.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from transformers import TrainerCallback

from alignlab.eval.gate import stderr_key
from alignlab.record import RunRecord

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


def cut_jsonl(path: Path, keep: Callable[[dict], bool]) -> None:
    """Rewrite a JSONL file with the rows `keep` accepts (and without a line torn by a kill)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if keep(row):
            kept.append(line)
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(path)


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

    def rewind(self, step: int) -> None:
        """Keep only the metrics.jsonl rows up to `step`: a node resumed from its checkpoint at
        `step` (0: from scratch) logs the steps after it again."""
        cut_jsonl(self.metrics_path, lambda row: row.get("step") is not None and row["step"] <= step)

    def table(self, name: str, jsonl: Path) -> None:
        """Log a JSONL file's rows as a wandb.Table (columns from the first row)."""
        if self.run is None or not jsonl.is_file():
            return
        import wandb

        rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
        if rows:
            columns = list(rows[0])
            self.run.log({name: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})

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


def comparison_tables(record: RunRecord) -> Dict[str, tuple]:
    """(columns, rows) of the forgetting, reward-KL and judge results, one row per (model, task) / model /
    comparison."""
    tables: Dict[str, tuple] = {}
    forgetting = record.forgetting
    if forgetting is not None and forgetting.base:
        rows = []
        models = {"base": forgetting.base, **{n: v.scores for n, v in forgetting.nodes.items()}}
        for model, scores in models.items():
            for task, p in forgetting.metrics.items():
                d = forgetting.delta(model, task)
                base, parent = (d.vs_base, d.vs_parent) if d else (None, None)
                rows.append([model, task, p.metric, p.gated, scores[task].get(p.metric),
                             scores[task].get(stderr_key(p.metric)), *_fields(base, "delta", "lo", "hi", "n"),
                             *_fields(parent, "delta")])
        tables["forgetting"] = (["model", "task", "metric", "gated", "score", "stderr", "vs_base_points",
                                 "vs_base_ci_low", "vs_base_ci_high", "n", "vs_parent_points"], rows)
    frontier = record.reward_kl
    if frontier is not None and frontier.nodes:
        rows = [[name, p.stage, p.label, p.reference, p.reward, *p.reward_ci, p.kl, *p.kl_ci, p.prompts, p.n,
                 p.eos_fraction, p.response_length] for name, p in frontier.nodes.items()]
        tables["reward_kl"] = (["model", "stage", "settings", "reference", f"reward ({frontier.reward})",
                                "reward_ci_low", "reward_ci_high", "kl", "kl_ci_low", "kl_ci_high", "prompts",
                                "samples", "eos_fraction", "response_length"], rows)
    judge = record.judge
    if judge is not None and judge.comparisons:
        rows = [[c.a, c.b, c.p_better, *(c.p_better_ci or [None, None]), c.win, c.tie, c.loss, c.unparseable,
                 c.win_rate, c.win_rate_ci[0], c.win_rate_ci[1], c.tie_mass, c.position_bias, c.consistency,
                 c.judge_informative] for c in judge.comparisons.values()]
        tables["judge"] = (["a", "b", "p_better", "p_better_ci_low", "p_better_ci_high", "win", "tie", "loss",
                            "unparseable", "win_rate", "win_rate_ci_low", "win_rate_ci_high", "tie_mass",
                            "position_bias", "consistency", "judge_informative"], rows)
    if judge is not None and judge.calibration is not None:
        rows = [[name, m.n, m.agreement, *m.agreement_ci, m.agreement_one_order, m.p_label_better, m.consistency,
                 m.position_bias, m.tie_mass, m.informative] for name, m in judge.calibration.sets.items()]
        tables["judge_calibration"] = (["set", "pairs", "agreement", "agreement_ci_low", "agreement_ci_high",
                                        "agreement_one_order", "p_label_better", "consistency", "position_bias",
                                        "tie_mass", "informative"], rows)
    return tables


def _fields(value: Any, *names: str) -> list:
    """The named attributes of `value`, or Nones when it is None."""
    return [None if value is None else getattr(value, n) for n in names]


def log_comparison(logger_cfg, experiment: str, record: RunRecord, files: Dict[str, Path]) -> None:
    """One W&B run per experiment (job_type `compare`): forgetting, reward-KL and judge tables, plots,
    node metrics."""
    if logger_cfg.backend != "wandb" or logger_cfg.mode == "disabled":
        return
    import wandb

    run = wandb.init(project=logger_cfg.project, entity=logger_cfg.entity, group=logger_cfg.group or experiment,
                     job_type="compare", name=f"{experiment}-compare", tags=list(logger_cfg.tags),
                     mode=logger_cfg.mode, dir=record.run_dir, reinit="finish_previous",
                     config={"nodes": {n: {"stage": v.stage, "key": v.key, "hparams": v.hparams}
                                       for n, v in record.nodes.items()}})
    try:
        payload: Dict[str, Any] = {name: wandb.Table(columns=cols, data=rows)
                                   for name, (cols, rows) in comparison_tables(record).items()}
        payload.update({f"plots/{p.stem}": wandb.Image(str(p)) for name, p in files.items() if p.suffix == ".png"})
        run.log(payload)
        for node, entry in record.nodes.items():
            run.summary.update({f"{node}/{k}": v for k, v in entry.metrics.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if record.reward_kl is not None:
            run.summary.update(record.reward_kl.columns())
    finally:
        run.finish()
