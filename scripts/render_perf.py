"""Regenerate README.md's performance section from the latest results/bench_*.json (between the
`<!-- perf:start -->` and `<!-- perf:end -->` markers): machine, date and figures of every
benchmark found, never typed by hand. Usage: .venv/bin/python scripts/render_perf.py
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- perf:start -->", "<!-- perf:end -->"


def _mib(x: float) -> str:
    return f"{x:.0f} MiB"


def _rows(name: str, r: dict) -> list:
    """(benchmark, baseline, alignlab, ratio, goal, met) rows of one result file."""
    if name == "bench_overhead":
        return [("P1 overhead: SFT -> DPO", f"bare trl script {r['baseline']['seconds']} s",
                 f"{r['alignlab']['seconds']} s", f"{r['ratio']:.3f}", r["goal"], r["meets_goal"])]
    if name in ("bench_ppo", "bench_ppo_fp32"):
        b, a = r["baseline"], r["alignlab"]
        label = f"P2 PPO vs trl {b['version']} ({r['settings']['precision']})"
        return [(f"{label}: throughput", f"{b['episodes_per_s']:.3f} episodes/s", f"{a['episodes_per_s']:.3f} episodes/s",
                 f"{r['throughput_ratio']:.2f}", r["goals"]["throughput_ratio"], r["throughput_ratio"] >= 1.5),
                (f"{label}: peak RSS", _mib(b["peak_rss_mib"]), _mib(a["peak_rss_mib"]), f"{r['peak_rss_ratio']:.2f}",
                 r["goals"]["peak_rss_ratio"], r["peak_rss_ratio"] <= 0.6)]
    if name == "bench_ppo_memory":
        rows = []
        for variant in ("all_activations", "activation_checkpointing"):
            v = r[variant]
            rows.append((f"P3 PPO memory, shared base vs four models ({variant.replace('_', ' ')})",
                         _mib(v["baseline"]["peak_rss_mib"]), _mib(v["alignlab"]["peak_rss_mib"]), f"{v['ratio']:.2f}",
                         r["goal"], r["meets_goal"][variant]))
        return rows
    if name == "bench_grid":
        return [("P4 grid reuse: 4-point DPO beta grid", f"naive {r['baseline']['seconds']} s",
                 f"shared SFT {r['alignlab']['seconds']} s", f"{r['ratio']:.2f}", r["goal"], r["meets_goal"])]
    if name == "bench_quickstart":
        return [("P5 quickstart end to end", f"budget {r['baseline']['seconds']} s", f"{r['alignlab']['seconds']} s",
                 f"{r['ratio']:.2f}", r["goal"], r["meets_goal"])]
    if name == "bench_precision":
        return [("bf16 autocast vs fp32 (LoRA step)", f"fp32 {r['baseline']['seconds_per_step']:.2f} s/step",
                 f"{r['bf16_autocast']['seconds_per_step']:.2f} s/step", f"{r['speedup_vs_baseline']:.2f}x faster",
                 "-", None)]
    return []


ORDER = ["bench_overhead", "bench_ppo", "bench_ppo_fp32", "bench_ppo_memory", "bench_grid", "bench_quickstart",
         "bench_precision"]  # P1..P5, then the rest


def render(results: Path) -> str:
    found = sorted(results.glob("bench_*.json"),
                   key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))
    loaded = [(p.stem, json.loads(p.read_text())) for p in found]
    lines = [START, "", "| benchmark | baseline | alignlab | ratio | goal | met |", "|---|---|---|---|---|---|"]
    for name, r in loaded:
        for bench, base, ours, ratio, goal, met in _rows(name, r):
            lines.append(f"| {bench} | {base} | {ours} | {ratio} | {goal} | {'-' if met is None else ('yes' if met else 'no')} |")
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
