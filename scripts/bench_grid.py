"""Benchmark P4: a 4-point DPO beta grid with its shared SFT node computed once (alignlab multirun
with the content-addressed stage cache) vs the naive grid that runs each point from scratch
(SFT four times: each point its own empty stage cache), in one run of this script.

Both sides run the real `alignlab` CLI on experiment=grid/dpo_beta (embedded SmolLM2-135M, SFT ->
DPO on the mirror's HH-RLHF pairs); the embedded model's one-time conversion is done before
either side is timed. Each side runs --repeats times (3), alternating sides, every run from empty
stage caches. Writes results/bench_grid.json with each side's median, min and max wall time and
the ratio of medians.
Usage: .venv/bin/python scripts/bench_grid.py [--betas 0.01,0.05,0.1,0.5 --repeats 3]
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

from bench_common import REPEATS, alternate, figure, write_result

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
MODEL_CACHE = str(Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab")) / "models")
GOAL = 0.5


def _alignlab(*overrides: str, multirun: bool = False) -> float:
    """Wall seconds of one `alignlab` run of the grid experiment."""
    start = time.perf_counter()
    subprocess.run([ALIGNLAB, *(["-m"] if multirun else []), "experiment=grid/dpo_beta", "logger=none", *overrides],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--betas", default="0.01,0.05,0.1,0.5")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs per side, alternating sides")
    parser.add_argument("--out", default="results/bench_grid.json")
    parser.add_argument("overrides", nargs="*",
                        help="alignlab overrides for every run (none for the benchmark; e.g. a smaller run to try it)")
    args = parser.parse_args()
    betas = args.betas.split(",")
    from alignlab.models import ModelConfig, resolve_model_path

    resolve_model_path(ModelConfig(), MODEL_CACHE)  # the embedded model's one-time conversion, outside both timings
    with tempfile.TemporaryDirectory(prefix="alignlab-bench-grid-") as tmp:
        tmp = Path(tmp)

        def naive(run: int) -> dict:
            """Every point its own run with an empty stage cache."""
            points = {beta: round(_alignlab(*args.overrides, f"stage.dpo.beta={beta}",
                                            f"paths.cache_dir={tmp / f'naive-{run}-{i}'}",
                                            f"hydra.run.dir={tmp / f'naive-run-{run}-{i}'}"), 1)
                      for i, beta in enumerate(betas)}
            return {"seconds": round(sum(points.values()), 1), "per_point_seconds": points}

        def shared(run: int) -> dict:
            """One multirun sharing an (initially empty) stage cache."""
            sweep = tmp / f"sweep-{run}"
            seconds = _alignlab(*args.overrides, f"stage.dpo.beta={args.betas}", f"paths.cache_dir={tmp / f'shared-{run}'}",
                                f"hydra.sweep.dir={sweep}", multirun=True)
            status = sorted(r["sft/status"] for r in csv.DictReader((sweep / "grid_summary.csv").open()))
            if status.count("trained") != 1:
                raise SystemExit(f"expected the SFT node to train once in the grid, got {status}")
            return {"seconds": round(seconds, 1), "sft_status": status}

        runs = alternate({f"naive grid: {len(betas)} independent runs": naive,
                          "alignlab grid: one multirun sharing the stage cache": shared}, args.repeats)
    naive_runs, shared_runs = runs.values()
    result = {
        "benchmark": "P4 grid reuse: 4-point DPO beta grid, shared SFT node vs SFT per point",
        "settings": {"experiment": "grid/dpo_beta", "betas": betas, "overrides": args.overrides,
                     "repeats": args.repeats},
        "figures": [figure(f"P4 grid reuse: {len(betas)}-point DPO beta grid", "s",
                           [r["seconds"] for r in naive_runs], [r["seconds"] for r in shared_runs], f"<= {GOAL}",
                           "naive", "shared SFT")],
        "runs": {"baseline": naive_runs, "alignlab": shared_runs},
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
