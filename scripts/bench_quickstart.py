"""Benchmark P5: the quickstart end to end (`alignlab` with its defaults: SFT, RM, DPO and PPO,
forgetting checks, judge, report, W&B offline) with an empty stage cache, against the 10-minute
budget. The embedded model's one-time GGUF conversion is timed separately. Writes
results/bench_quickstart.json with the wall time and each node's seconds.
Usage: .venv/bin/python scripts/bench_quickstart.py
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

from bench_common import write_result

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
MODEL_CACHE = str(Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab")) / "models")
BUDGET_S = 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="results/bench_quickstart.json")
    args = parser.parse_args()
    from alignlab.models import ModelConfig, resolve_model_path

    start = time.perf_counter()
    resolve_model_path(ModelConfig(), MODEL_CACHE)
    conversion = time.perf_counter() - start  # ~0 when the model cache already holds it
    with tempfile.TemporaryDirectory(prefix="alignlab-bench-quickstart-") as tmp:
        run_dir = Path(tmp) / "run"
        env = {**os.environ, "WANDB_DIR": tmp}
        print("quickstart with an empty stage cache ...", flush=True)
        start = time.perf_counter()
        subprocess.run([ALIGNLAB, f"paths.cache_dir={Path(tmp) / 'cache'}", f"hydra.run.dir={run_dir}"], check=True,
                       capture_output=True, env=env)
        seconds = time.perf_counter() - start
        summary = json.loads((run_dir / "summary.json").read_text())
    result = {
        "benchmark": "P5 quickstart wall time (empty stage cache)",
        "baseline": {"name": "budget", "seconds": BUDGET_S},
        "alignlab": {"name": "alignlab quickstart", "seconds": round(seconds, 1),
                     "model_conversion_seconds": round(conversion, 1),
                     "node_seconds": {k: n["seconds"] for k, n in summary["nodes"].items()}},
        "ratio": round(seconds / BUDGET_S, 3),
        "goal": f"<= {BUDGET_S} s",
    }
    result["meets_goal"] = seconds <= BUDGET_S
    write_result(args.out, result)
    print(f"quickstart {seconds:.0f} s (budget {BUDGET_S} s) -> {args.out}")


if __name__ == "__main__":
    main()
