"""Benchmark: alignlab's `grpo` stage vs the same trl GRPOTrainer call in a bare script.

The `alignlab` CLI runs experiment=paper/grpo_gsm8k_mini (a fresh LoRA adapter on the embedded
SmolLM2, GSM8K questions, the correctness and format rewards; forgetting checks, judge and W&B off;
an empty stage cache every run); the baseline (scripts/bench/trl_grpo_bare.py) builds trl's
GRPOTrainer directly on the exact prompt rows alignlab trained on, with the arguments alignlab
passes (alignlab.stages.trl_recipe.trainer_fields + alignlab.stages.grpo.online_arguments) and the
same LoRA, trains and saves. Both sides are whole processes, timed from start to exit; each runs
--repeats times (3), alternating. Writes results/bench_grpo.json: each side's median, min and max
wall seconds and the ratio of medians (goal <= 1.05).
Usage: .venv/bin/python scripts/bench_grpo.py [--steps 6 --repeats 3]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import REPEATS, alternate, figure, write_result
from bench_overhead import ALIGNLAB, MODEL_CACHE, REPO, _compose

GOAL = "<= 1.05"


def prepare(cfg, tmp: Path) -> dict:
    """The prompt rows the grpo node trains on (JSON lines) and the baseline's arguments."""
    from omegaconf import OmegaConf

    from alignlab.data import load_data
    from alignlab.stages.grpo import online_arguments
    from alignlab.stages.trl_recipe import trainer_fields

    h = cfg.stage.grpo
    if list(h.reward_fns) != ["correct", "format"] or cfg.pipeline.nodes.grpo.get("reward"):
        raise SystemExit("the bare script scores gsm8k_correct then gsm8k_format, and no reward node")
    rows = load_data(cfg.data.prompts, "prompt", cfg.paths.data_home).train
    with open(tmp / "rows.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    weights = [float(h.reward_weights.get(name, 1.0)) for name in h.reward_fns]
    fields = trainer_fields(OmegaConf.to_container(h, resolve=True), False)
    peft = cfg.peft
    return {"grpo": {**fields, **OmegaConf.to_container(OmegaConf.create(online_arguments("grpo", h, weights)))},
            "lora": {"r": peft.r, "lora_alpha": peft.alpha, "lora_dropout": peft.dropout,
                     "target_modules": "all-linear", "bias": peft.bias}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs per side, alternating sides")
    parser.add_argument("--out", default="results/bench_grpo.json")
    args = parser.parse_args()
    from alignlab.models import ModelConfig, resolve_model_path

    model_dir = resolve_model_path(ModelConfig(), MODEL_CACHE)  # one-time conversion, outside both timings
    overrides = ["experiment=paper/grpo_gsm8k_mini", "eval=none", "judge=none", "logger=none",
                 f"stage.grpo.max_steps={args.steps}", f"stage.grpo.save_steps={args.steps}"]
    with tempfile.TemporaryDirectory(prefix="alignlab-bench-grpo-") as tmp:
        tmp = Path(tmp)
        cfg = _compose([*overrides, f"paths.model_cache={MODEL_CACHE}"])
        spec = prepare(cfg, tmp)
        (tmp / "args.json").write_text(json.dumps(spec))

        def bare(i: int) -> dict:
            start = time.perf_counter()
            subprocess.run([sys.executable, str(REPO / "scripts" / "bench" / "trl_grpo_bare.py"), "--model", model_dir,
                            "--rows", str(tmp / "rows.jsonl"), "--args", str(tmp / "args.json"),
                            "--out", str(tmp / f"bare-{i}")], check=True, capture_output=True, text=True)
            return {"seconds": round(time.perf_counter() - start, 1)}

        def ours(i: int) -> dict:  # an empty stage cache every run
            start = time.perf_counter()
            subprocess.run([ALIGNLAB, *overrides, f"paths.cache_dir={tmp / f'cache-{i}'}",
                            f"hydra.run.dir={tmp / f'run-{i}'}"], check=True, capture_output=True)
            seconds = time.perf_counter() - start
            node = json.loads((tmp / f"run-{i}" / "summary.json").read_text())["nodes"]["grpo"]
            return {"seconds": round(seconds, 1), "stage_seconds": node["seconds"],
                    "train_steps": node["metrics"]["train_steps"]}

        runs = alternate({"bare trl GRPOTrainer": bare, "alignlab grpo stage": ours}, args.repeats)
    bare_runs, our_runs = runs.values()
    result = {
        "benchmark": "GRPO: alignlab grpo stage vs the same trl GRPOTrainer call in a bare script",
        "settings": {"overrides": overrides, "spec": spec, "repeats": args.repeats},
        "figures": [figure("GRPO stage vs bare trl (wall)", "s", [r["seconds"] for r in bare_runs],
                           [r["seconds"] for r in our_runs], GOAL, "bare trl script", "alignlab CLI")],
        "runs": {"baseline": bare_runs, "alignlab": our_runs},
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
