"""What every benchmark script shares: repeated runs of both sides, their spread and ratio, and
the result file with its date and machine.

A single timed run moves by +-15% on a shared 2-core machine, so every benchmark runs each side
REPEATS times, alternating sides (baseline, alignlab, baseline, ...: slow drift of the machine hits
both alike), and a figure is judged by the ratio of the two medians; when the two sides' ranges
overlap, the figure says so.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

REPEATS = 3  # runs per side


def alternate(sides: Dict[str, Callable[[int], dict]], repeats: int = REPEATS) -> Dict[str, List[dict]]:
    """Each side's `run(i)` for i = 0..repeats-1, sides taking turns in the order given; the
    results of every run, per side."""
    if repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {repeats}")
    runs: Dict[str, List[dict]] = {name: [] for name in sides}
    for i in range(repeats):
        for name, run in sides.items():
            print(f"[{name} {i + 1}/{repeats}]", flush=True)
            runs[name].append(run(i))
    return runs


def spread(values: Sequence[float]) -> dict:
    """Median, min and max of one figure over the runs, and the runs themselves."""
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def meets(ratio: float, goal: Optional[str]) -> Optional[bool]:
    """Whether `ratio` meets a goal written '<= x' or '>= x' (None: no goal)."""
    if goal is None:
        return None
    op, value = goal.split()
    if op not in ("<=", ">="):
        raise ValueError(f"goal '{goal}' is not '<= x' or '>= x'")
    return ratio <= float(value) if op == "<=" else ratio >= float(value)


def figure(label: str, unit: str, baseline: Sequence[float], ours: Sequence[float], goal: Optional[str],
           baseline_name: str = "", alignlab_name: str = "") -> dict:
    """One compared figure: both sides' spread, the ratio of medians (alignlab / baseline), whether
    that ratio meets `goal` ('<= x', '>= x' or None), and whether the two ranges overlap (then the
    ratio's direction is not settled by these runs)."""
    b, a = spread(baseline), spread(ours)
    ratio = a["median"] / b["median"]
    return {"label": label, "unit": unit, "baseline_name": baseline_name, "alignlab_name": alignlab_name,
            "baseline": b, "alignlab": a, "ratio": round(ratio, 3), "goal": goal, "meets_goal": meets(ratio, goal),
            "ranges_overlap": b["min"] <= a["max"] and a["min"] <= b["max"]}


def describe(f: dict) -> str:
    """One line of a figure for the console."""
    def side(s: dict) -> str:
        spread = f" ({s['min']:.4g}-{s['max']:.4g}, {len(s['runs'])} runs)" if len(s["runs"]) > 1 else ""
        return f"{s['median']:.4g} {f['unit']}{spread}"

    met = "" if f["goal"] is None else f"; goal {f['goal']}: {'met' if f['meets_goal'] else 'not met'}"
    overlap = "; ranges overlap" if f["ranges_overlap"] else ""
    return (f"{f['label']}: baseline {side(f['baseline'])}, alignlab {side(f['alignlab'])}, "
            f"ratio of medians {f['ratio']}{met}{overlap}")


def write_result(path: str, result: dict) -> dict:
    """Write `result` as JSON to `path`, stamped with the UTC date and the machine it ran on; print
    its figures."""
    import torch

    stamped = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())},
        **result,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(stamped, indent=2))
    for f in stamped.get("figures", []):
        print(describe(f))
    print(f"-> {path}")
    return stamped
