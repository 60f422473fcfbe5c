"""Benchmark P1: alignlab's overhead over bare trl. The `alignlab` CLI runs SFT -> DPO (quickstart
data and model, forgetting checks, judge and W&B off) in one process; the baseline
(scripts/bench/trl_bare.py) runs the same two trainings written directly against trl, peft and
transformers in one process, on the exact rows alignlab trained on and with the trainer
arguments alignlab passes (alignlab.stages.trl_recipe.trainer_fields: learning rate, steps, batch,
lengths, bf16 autocast, seeds; the same LoRA).
Both train, evaluate on the held-out rows and save. Writes results/bench_overhead.json with the
wall times and their ratio (goal <= 1.05) and each side's per-stage seconds.
Usage: .venv/bin/python scripts/bench_overhead.py [--sft-steps 8 --dpo-steps 4]
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
REPO = Path(__file__).resolve().parents[1]
MODEL_CACHE = str(Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab")) / "models")
GOAL = 1.05


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from alignlab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def prepare(cfg, rows_dir: Path) -> dict:
    """The rows alignlab trains on, as JSON lines, and the baseline's arguments."""
    from alignlab.data import load_data

    sft, pref = load_data(cfg.data.sft, "sft", cfg.paths.data_home), load_data(cfg.data.preference, "preference",
                                                                                 cfg.paths.data_home)
    for name, rows in (("sft_train", sft.train), ("sft_eval", sft.eval), ("dpo_train", pref.train),
                       ("dpo_eval", pref.eval)):
        with open(rows_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    from omegaconf import OmegaConf

    from alignlab.stages.trl_recipe import trainer_fields

    s, d, peft = cfg.stage.sft, cfg.stage.dpo, cfg.peft
    fields = {kind: trainer_fields(OmegaConf.to_container(cfg.stage[kind], resolve=True), True) for kind in ("sft", "dpo")}
    return {
        "sft": {**fields["sft"], "max_length": s.max_length, "assistant_only_loss": s.assistant_only_loss,
                "packing": s.packing},
        "dpo": {**fields["dpo"], "beta": d.beta, "loss_type": list(d.loss_type), "max_length": d.max_length,
                "disable_dropout": d.disable_dropout},
        "lora": {"r": peft.r, "lora_alpha": peft.alpha, "lora_dropout": peft.dropout,
                 "target_modules": "all-linear", "bias": peft.bias},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sft-steps", type=int, default=8)
    parser.add_argument("--dpo-steps", type=int, default=4)
    parser.add_argument("--out", default="results/bench_overhead.json")
    args = parser.parse_args()
    from alignlab.models import ModelConfig, resolve_model_path

    model_dir = resolve_model_path(ModelConfig(), MODEL_CACHE)  # one-time conversion, outside both timings
    overrides = ["experiment=quickstart", "pipeline=sft_dpo", "eval=none", "judge=none", "logger=none",
                 f"stage.sft.max_steps={args.sft_steps}", f"stage.dpo.max_steps={args.dpo_steps}"]
    with tempfile.TemporaryDirectory(prefix="alignlab-bench-overhead-") as tmp:
        tmp = Path(tmp)
        cfg = _compose([*overrides, f"paths.model_cache={MODEL_CACHE}",
                        f"paths.cache_dir={tmp / 'cache'}", f"paths.run_dir={tmp / 'run'}"])
        spec = prepare(cfg, tmp)
        (tmp / "args.json").write_text(json.dumps(spec))
        print("bare trl: SFT then DPO ...", flush=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench" / "trl_bare.py"), "--model", model_dir,
                               "--rows", str(tmp), "--args", str(tmp / "args.json"), "--out", str(tmp / "bare")],
                              check=True, capture_output=True, text=True)
        bare = time.perf_counter() - start
        bare_stages = json.loads(done.stdout.strip().splitlines()[-1])
        print("alignlab: the same pipeline ...", flush=True)
        start = time.perf_counter()
        subprocess.run([ALIGNLAB, *overrides, f"paths.cache_dir={tmp / 'cache'}", f"hydra.run.dir={tmp / 'run'}"],
                       check=True, capture_output=True)
        ours = time.perf_counter() - start
        nodes = json.loads((tmp / "run" / "summary.json").read_text())["nodes"]
    result = {
        "benchmark": "P1 overhead: alignlab SFT -> DPO vs the same trl trainers in a bare script",
        "settings": {"overrides": overrides, "spec": spec},
        "baseline": {"name": "bare trl script", "seconds": round(bare, 1),
                     "stage_seconds": {k: round(v, 1) for k, v in bare_stages.items()}},
        "alignlab": {"name": "alignlab CLI", "seconds": round(ours, 1),
                     "stage_seconds": {k: n["seconds"] for k, n in nodes.items()}},
        "ratio": round(ours / bare, 3),
        "goal": f"ratio <= {GOAL}",
    }
    result["meets_goal"] = result["ratio"] <= GOAL
    write_result(args.out, result)
    print(f"bare trl {bare:.0f} s, alignlab {ours:.0f} s, ratio {result['ratio']:.3f} (goal <= {GOAL}) -> {args.out}")


if __name__ == "__main__":
    main()
