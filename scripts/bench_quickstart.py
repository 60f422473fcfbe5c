"""Benchmark P5: the quickstart end to end (`alignlab` with its defaults: SFT, RM, DPO and PPO,
forgetting checks, judge, report, W&B offline) with an empty stage cache, against the 10-minute
budget, --repeats times (3; about 8 min each on 2 cores). The embedded model's one-time GGUF
conversion is timed separately. Writes results/bench_quickstart.json with the median, min and max
wall time, the median over the budget, and every run's node seconds.
Usage: .venv/bin/python scripts/bench_quickstart.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import REPEATS, alternate, figure, write_result

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
MODEL_CACHE = str(Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab")) / "models")
BUDGET_S = 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=REPEATS, help="quickstart runs")
    parser.add_argument("--out", default="results/bench_quickstart.json")
    parser.add_argument("overrides", nargs="*",
                        help="alignlab overrides for every run (none for the benchmark; e.g. a smaller run to try it)")
    args = parser.parse_args()
    from alignlab.models import ModelConfig, resolve_model_path

    start = time.perf_counter()
    resolve_model_path(ModelConfig(), MODEL_CACHE)
    conversion = time.perf_counter() - start  # ~0 when the model cache already holds it
    with tempfile.TemporaryDirectory(prefix="alignlab-bench-quickstart-") as tmp:
        env = {**os.environ, "WANDB_DIR": tmp}

        def quickstart(i: int) -> dict:
            run_dir = Path(tmp) / f"run-{i}"
            start = time.perf_counter()
            subprocess.run([ALIGNLAB, *args.overrides, f"paths.cache_dir={Path(tmp) / f'cache-{i}'}",
                            f"hydra.run.dir={run_dir}"], check=True, capture_output=True, env=env)
            seconds = time.perf_counter() - start
            summary = json.loads((run_dir / "summary.json").read_text())
            return {"seconds": round(seconds, 1), "node_seconds": {k: n["seconds"] for k, n in summary["nodes"].items()}}

        runs = alternate({"quickstart with an empty stage cache": quickstart}, args.repeats)
    (ours,) = runs.values()
    result = {
        "benchmark": "P5 quickstart wall time (empty stage cache)",
        "settings": {"overrides": args.overrides, "repeats": args.repeats,
                     "model_conversion_seconds": round(conversion, 1)},
        # The baseline is the budget, not a run: ratio = median wall time / budget.
        "figures": [figure("P5 quickstart end to end", "s", [BUDGET_S], [r["seconds"] for r in ours], "<= 1",
                           "budget", "alignlab quickstart")],
        "runs": {"alignlab": ours},
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
