"""Benchmark P4: a 4-point DPO beta grid with its shared SFT node computed once (alignlab multirun
with the content-addressed stage cache) vs the naive grid that runs each point from scratch
(SFT four times: each point its own empty stage cache), in one run of this script.

Both sides run the real `alignlab` CLI on experiment=grid/dpo_beta (embedded SmolLM2-135M, SFT ->
DPO on the mirror's HH-RLHF pairs); the embedded model's one-time conversion is done before
either side is timed. Writes results/bench_grid.json with both wall times and their ratio.
Usage: .venv/bin/python scripts/bench_grid.py [--betas 0.01,0.05,0.1,0.5]
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import write_result

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
MODEL_CACHE = str(Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab")) / "models")
GOAL = 0.5


def _alignlab(*overrides: str, multirun: bool = False) -> float:
    start = time.perf_counter()
    subprocess.run([ALIGNLAB, *(["-m"] if multirun else []), "experiment=grid/dpo_beta", "logger=none", *overrides],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--betas", default="0.01,0.05,0.1,0.5")
    parser.add_argument("--out", default="results/bench_grid.json")
    args = parser.parse_args()
    betas = args.betas.split(",")
    from alignlab.models import ModelConfig, resolve_model_path

    resolve_model_path(ModelConfig(), MODEL_CACHE)  # the embedded model's one-time conversion, outside both timings
    with tempfile.TemporaryDirectory(prefix="alignlab-bench-grid-") as tmp:
        tmp = Path(tmp)
        print(f"naive grid: {len(betas)} independent runs, each with an empty stage cache ...", flush=True)
        naive = {}
        for i, beta in enumerate(betas):
            naive[beta] = _alignlab(f"stage.dpo.beta={beta}", f"paths.cache_dir={tmp / f'naive-{i}'}",
                                    f"hydra.run.dir={tmp / f'naive-run-{i}'}")
            print(f"  beta={beta}: {naive[beta]:.1f} s", flush=True)
        print("alignlab grid: one multirun sharing the stage cache ...", flush=True)
        sweep = tmp / "sweep"
        shared = _alignlab(f"stage.dpo.beta={args.betas}", f"paths.cache_dir={tmp / 'shared'}",
                           f"hydra.sweep.dir={sweep}", multirun=True)
        rows = list(csv.DictReader((sweep / "grid_summary.csv").open()))
        sft_status = sorted(r["sft/status"] for r in rows)
    naive_total = sum(naive.values())
    result = {
        "benchmark": "P4 grid reuse: 4-point DPO beta grid, shared SFT node vs SFT per point",
        "settings": {"experiment": "grid/dpo_beta", "betas": betas},
        "baseline": {"name": "naive grid (each point from scratch)", "seconds": round(naive_total, 1),
                     "per_point_seconds": {b: round(s, 1) for b, s in naive.items()}},
        "alignlab": {"name": "multirun with the shared stage cache", "seconds": round(shared, 1),
                     "sft_status": sft_status},
        "ratio": round(shared / naive_total, 3),
        "goal": f"ratio <= {GOAL}",
    }
    result["meets_goal"] = result["ratio"] <= GOAL
    write_result(args.out, result)
    print(f"naive {naive_total:.0f} s, shared {shared:.0f} s (SFT: {sft_status}), ratio {result['ratio']:.2f} "
          f"(goal <= {GOAL}) -> {args.out}")
    if sft_status.count("trained") != 1:
        raise SystemExit(f"expected the SFT node to train once in the grid, got {sft_status}")


if __name__ == "__main__":
    main()
