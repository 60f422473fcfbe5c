"""Regenerate README.md's performance section from the latest results/bench_*.json (between the
`<!-- perf:start -->` and `<!-- perf:end -->` markers): machine, date and figures of every
benchmark found, never typed by hand. Each figure shows both sides' median and range over their
runs; a goal is met only when the ratio of the medians meets it. Usage: .venv/bin/python scripts/render_perf.py
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_common import meets

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- perf:start -->", "<!-- perf:end -->"


def _side(name: str, s: dict, unit: str) -> str:
    """'name median unit (min-max, n runs)'; a single value (a budget) without its range."""
    value = f"{s['median']:.4g} {unit}"
    if len(s["runs"]) > 1:
        value += f" ({s['min']:.4g}-{s['max']:.4g}, {len(s['runs'])} runs)"
    return f"{name} {value}".strip()


def _row(f: dict) -> str:
    """A table row of one figure; met is decided here, by the ratio of medians against the goal."""
    met = meets(f["ratio"], f["goal"])
    ratio = f"{f['ratio']:.3g}" + (" (ranges overlap)" if f["ranges_overlap"] else "")
    return (f"| {f['label']} | {_side(f['baseline_name'], f['baseline'], f['unit'])} | "
            f"{_side(f['alignlab_name'], f['alignlab'], f['unit'])} | {ratio} | {f['goal'] or '-'} | "
            f"{'-' if met is None else ('yes' if met else 'no')} |")


ORDER = ["bench_overhead", "bench_ppo", "bench_ppo_fp32", "bench_ppo_memory", "bench_ppo_memory_1b", "bench_grid",
         "bench_quickstart", "bench_grpo", "bench_precision"]  # P1..P5, then the rest


def render(results: Path) -> str:
    found = sorted(results.glob("bench_*.json"),
                   key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))
    loaded = [(p.stem, json.loads(p.read_text())) for p in found]
    for name, r in loaded:
        if "figures" not in r:
            raise SystemExit(f"{results / name}.json is a single-run result from before benchmarks repeated their "
                             f"runs (no 'figures'); rerun scripts/{name.replace('_fp32', '').replace('_1b', '')}.py or remove it")
    lines = [START, "", "| benchmark | baseline: median (min-max) | alignlab: median (min-max) | ratio of medians "
                        "| goal | met |", "|---|---|---|---|---|---|"]
    lines += [_row(f) for _, r in loaded for f in r["figures"]]
    lines.append("")
    for name, r in loaded:
        machine = r.get("machine", {})
        lines.append(f"- `results/{name}.json`: {r.get('date', '?')}, {machine.get('platform', '?')}, "
                     f"{machine.get('cpus', machine.get('cpu_count', '?'))} CPUs, torch {machine.get('torch', '?')}")
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", default=str(REPO / "results"))
    parser.add_argument("--readme", default=str(REPO / "README.md"))
    args = parser.parse_args()
    readme = Path(args.readme)
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: no {START} ... {END} section to regenerate")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(head + render(Path(args.results)) + tail)
    print(f"{readme}: performance section regenerated from {args.results}")


if __name__ == "__main__":
    main()
