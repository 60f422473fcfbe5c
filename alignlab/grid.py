"""Grid summary of a Hydra multirun: one row per job with its overrides and key metrics.

`GridSummary` is a Hydra callback (registered in conf/config.yaml): after every job it records
the job's status and error in `<job_dir>/job_status.json` and rewrites `grid_summary.csv`,
`grid_summary.md`, `grid_summary.html`, `grid_summary.png` and (when the runs evaluated reward and
KL, `eval.reward_kl`) the frontier figure `grid_frontier.png` in the sweep directory, so the
summary is complete even when a job fails (Hydra then stops without `on_multirun_end`).
`python -m alignlab.grid <sweep_dir> [--metric M] [--key K]` rebuilds it by hand.
"""
from __future__ import annotations

import argparse
import csv
import html
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from filelock import FileLock
from hydra.experimental.callback import Callback

from alignlab.record import SUMMARY, RewardKLRecord, RunRecord, load
from alignlab.stages import headline


def summary_row(record: RunRecord) -> Dict[str, Any]:
    """The flattened key metrics of one run (the grid summary's metric columns): each node's
    status and its stage's headline metrics (the registry's), forgetting deltas, reward and KL
    (`RewardKLRecord.columns`), judge verdicts."""
    row: Dict[str, Any] = {}
    for name, node in record.nodes.items():
        row[f"{name}/status"] = node.status
        for metric in headline([node.stage]):
            if node.metrics.get(metric) is not None:
                row[f"{name}/{metric}"] = node.metrics[metric]
    forgetting = record.forgetting
    if forgetting is not None and forgetting.nodes:
        row["forgetting/violations"] = len(forgetting.violations)
        for name, node in forgetting.nodes.items():
            for d in node.deltas:
                if d.gated:
                    row[f"{name}/{d.task.replace('alignlab_', '')} Δbase"] = d.vs_base.delta
    if record.reward_kl is not None:
        row.update(record.reward_kl.columns())
    for key, c in (record.judge.comparisons if record.judge is not None else {}).items():
        row[f"judge {key} p_better"] = c.p_better
        row[f"judge {key} win_rate"] = c.win_rate
    return row


def job_overrides(job_dir: Path) -> List[str]:
    """The command-line overrides of one multirun job (Hydra's `.hydra/overrides.yaml`)."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        return []
    import yaml

    return yaml.safe_load(overrides_file.read_text()) or []


def job_row(job_dir: Path) -> Dict[str, Any]:
    """Overrides, status, error and flattened key metrics of one multirun job directory."""
    row: Dict[str, Any] = {"job": job_dir.name, "overrides": " ".join(job_overrides(job_dir))}
    status_file, summary_file = job_dir / "job_status.json", job_dir / SUMMARY
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    record = load(summary_file) if summary_file.is_file() else None  # none: the job failed before writing one
    row["status"] = status.get("status") or (record.status if record else "unknown")
    row["error"] = status.get("error") or (record.error if record else "") or ""
    return {**row, **(summary_row(record) if record else {})}


def objective_value(objective, record: RunRecord) -> Optional[float]:
    """The number a run returns to an optimising sweeper (conf `objective`), or None when unset."""
    from alignlab.errors import ConfigError

    if not objective.metric:
        return None
    row = summary_row(record)
    if objective.gate_fail_value is not None and row.get("forgetting/violations"):
        return float(objective.gate_fail_value)
    value = row.get(objective.metric)
    if not isinstance(value, (int, float)):
        raise ConfigError(f"objective.metric '{objective.metric}' is not a number in this run's summary; "
                          f"numeric columns: {', '.join(sorted(k for k, v in row.items() if isinstance(v, (int, float))))}")
    return float(value)


def _columns(rows: List[Dict[str, Any]]) -> List[str]:
    first = ["job", "overrides", "status"]
    rest = sorted({k for r in rows for k in r} - set(first) - {"error"})
    return first + rest + ["error"]


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))


def _plot(rows: List[Dict[str, Any]], metric: str, key: str, path: Path) -> bool:
    """`metric` against the value `key` takes in each job's overrides (numeric keys on a number line)."""
    points = []
    for r in rows:
        value = next((o.split("=", 1)[1] for o in r["overrides"].split() if o.split("=", 1)[0].lstrip("+") == key), None)
        if value is not None and isinstance(r.get(metric), (int, float)):
            points.append((value, r[metric]))
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        points = sorted((float(v), m) for v, m in points)
    except ValueError:
        points = sorted(points)
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


FRONTIER = "grid_frontier.png"


def _short(override: str) -> str:
    """`stage.dpo.beta=0.1` -> `beta=0.1`."""
    key, _, value = override.partition("=")
    return f"{key.lstrip('+').rsplit('.', 1)[-1]}={value}"


def frontier_points(jobs: List[Path]) -> Tuple[list, Optional[RewardKLRecord]]:
    """(label, stage kind, RewardKLNode) of every model every job evaluated, each distinct point once,
    and the last job's `reward_kl` section (its settings). A node's label is its name, the swept
    overrides of its stage kind or of the node (e.g. beta=0.1), else all of the job's overrides, and
    its own settings."""
    points, seen, section = [], set(), None
    for job in jobs:
        if not (job / SUMMARY).is_file():
            continue
        record = load(job / SUMMARY)
        if record.reward_kl is None:
            continue
        section = record.reward_kl
        overrides = job_overrides(job)
        for name, p in record.reward_kl.nodes.items():
            own = [o for o in overrides if o.lstrip("+").startswith((f"stage.{p.stage}.", f"pipeline.nodes.{name}."))]
            swept = ", ".join(_short(o) for o in (own or overrides)) if p.stage != "base" else ""
            label = ", ".join(x for x in (name, swept, p.label) if x)
            key = (name, p.stage, p.label, round(p.reward, 9), round(p.kl, 9))
            if key not in seen:
                seen.add(key)
                points.append((label, p.stage, p))
    return points, section


def _plot_frontier(jobs: List[Path], path: Path) -> bool:
    from alignlab.report import plot_frontier

    points, section = frontier_points(jobs)
    if not points:
        return False
    plot_frontier(points, path, f"reward-KL frontier of {len(jobs)} grid point(s)", section.confidence, section.reward)
    return True


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_grid_summary(sweep_dir: Path, metric: Optional[str] = None, key: Optional[str] = None) -> List[Dict[str, Any]]:
    """Rebuild the grid summary files of `sweep_dir` from its job directories; returns the rows."""
    sweep_dir = Path(sweep_dir)
    jobs = sorted((d for d in sweep_dir.iterdir() if d.is_dir() and (d / ".hydra").is_dir()),
                  key=lambda d: (len(d.name), d.name))
    rows = [job_row(d) for d in jobs]
    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows([{c: _fmt(r.get(c)) for c in columns} for r in rows])
    _atomic_write(sweep_dir / "grid_summary.csv", buffer.getvalue())
    failed = [r for r in rows if r["status"] not in ("ok", "unknown")]
    md = [f"# Grid summary: {sweep_dir}", "", f"{len(rows)} job(s), {len(failed)} failed.", "",
          "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows]
    if failed:
        md += ["", "## Failed jobs", ""] + [f"- job {r['job']} ({r['overrides']}): {r['error']}" for r in failed]
    plotted = bool(metric and key) and _plot(rows, metric, key, sweep_dir / "grid_summary.png")
    if plotted:
        md += ["", f"![{metric} vs {key}](grid_summary.png)"]
    frontier = _plot_frontier(jobs, sweep_dir / FRONTIER)
    if frontier:
        md += ["", f"![reward-KL frontier]({FRONTIER})"]
    _atomic_write(sweep_dir / "grid_summary.md", "\n".join(md) + "\n")
    body = ["<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"]
    body += ["<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows]
    _atomic_write(sweep_dir / "grid_summary.html",
                  f"<!doctype html><meta charset='utf-8'><h1>Grid summary</h1><p>{len(rows)} job(s), "
                  f"{len(failed)} failed.</p>" + "".join(body) + "</table>"
                  + ("<img src='grid_summary.png'>" if plotted else "")
                  + (f"<img src='{FRONTIER}'>" if frontier else ""))
    return rows


class GridSummary(Callback):
    """Hydra callback: job status per job, grid summary of the sweep after every job."""

    def __init__(self, metric: Optional[str] = None, key: Optional[str] = None):
        self.metric, self.key = metric, key

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return
        job_dir = Path(hydra_cfg.runtime.output_dir)
        failed, error = job_return.status.name == "FAILED", None
        if failed:
            try:  # Hydra's public accessor re-raises the job's exception
                job_return.return_value
            except Exception as err:  # noqa: BLE001 - recorded in job_status.json
                error = err
        (job_dir / "job_status.json").write_text(json.dumps({
            "status": "failed" if failed else "ok",
            "error": f"{type(error).__name__}: {error}" if error is not None else "",
            "overrides": list(hydra_cfg.overrides.task),
        }))
        sweep_dir = Path(hydra_cfg.sweep.dir)
        with FileLock(str(sweep_dir / "grid_summary.lock")):
            write_grid_summary(sweep_dir, self.metric, self.key)


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the grid summary of a multirun sweep directory.")
    parser.add_argument("sweep_dir")
    parser.add_argument("--metric", help="column to plot, e.g. dpo/eval_rewards/accuracies")
    parser.add_argument("--key", help="swept override to plot it against, e.g. stage.dpo.beta")
    args = parser.parse_args()
    rows = write_grid_summary(Path(args.sweep_dir), args.metric, args.key)
    print(f"{len(rows)} job(s) -> {Path(args.sweep_dir) / 'grid_summary.md'}")


if __name__ == "__main__":
    main()
