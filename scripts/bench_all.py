"""Run every benchmark one after the other (never two at once on a small machine), each writing
its JSON under results/, then regenerate README.md's performance section from them.
Usage: .venv/bin/python scripts/bench_all.py [--only bench_ppo,bench_grid]   (make bench)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (script, arguments): P1..P5 and the precision measurement.
BENCHMARKS = [
    ("bench_overhead", []),
    ("bench_ppo", []),  # both libraries' default precision (bf16 autocast where the CPU has it)
    ("bench_ppo", ["--precision", "fp32", "--out", "results/bench_ppo_fp32.json"]),
    ("bench_ppo_memory", []),
    ("bench_ppo_memory", ["--model", "random-llama", "--out", "results/bench_ppo_memory_1b.json"]),  # weights dominate
    ("bench_grid", []),
    ("bench_quickstart", []),
    ("bench_grpo", []),
    ("bench_precision", []),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="comma-separated script names, e.g. bench_ppo,bench_grid")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    failed = []
    for script, extra in BENCHMARKS:
        if only and script not in only:
            continue
        print(f"== {script} {' '.join(extra)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / f"{script}.py"), *extra]).returncode != 0:
            failed.append(script)
    subprocess.run([sys.executable, str(HERE / "render_perf.py")], check=True)
    if failed:
        raise SystemExit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
