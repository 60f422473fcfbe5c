"""Benchmark P2: alignlab PPO vs trl 0.29.1's `trl.experimental.ppo.PPOTrainer` (the baseline), side by side.

Same embedded SmolLM2-135M policy (LoRA r=16 on all linear layers), same reward model (the base
with one seeded score head), same prompts (the mirror's Vicuna questions), batch, response
length, PPO epochs, sampling temperature, KL coefficient and autocast precision (bf16 by default:
trl's PPOConfig and alignlab both default to it on a bf16-capable CPU; --precision fp32). trl runs in its
own throwaway venv (`$ALIGNLAB_CACHE/bench/trl-0.29.1-venv`, created on first use: torch 2.13.0
first, then trl==0.29.1 and peft) with its four models (policy+reference via a disabled adapter, full
value model, reward model); alignlab runs its shared-base PPO (alignlab/rl). Each side is its
own process so peak RSS is per side. Each side runs --repeats times (3), alternating sides, at 64
episodes per run (over 60 s per side on 2 cores). Writes results/bench_ppo.json with the median,
min and max episodes/s and peak RSS per side and the ratios of medians (scripts/bench_common.py).
Usage: .venv/bin/python scripts/bench_ppo.py [--batch 8 --response-length 32 --iterations 8 --repeats 3]
[--precision bf16|fp32 --out results/bench_ppo.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import REPEATS, alternate, figure, write_result

CACHE = Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab"))
MODEL_CACHE = str(CACHE / "models")
TRL = "trl==0.29.1"
VENV = CACHE / "bench" / "trl-0.29.1-venv"
HERE = Path(__file__).resolve().parent
GOALS = {"throughput_ratio": ">= 1.5", "peak_rss_ratio": "<= 0.6"}


def _cfg():
    from omegaconf import OmegaConf

    from alignlab.models import ModelConfig, PeftConfig, QuantConfig

    return OmegaConf.create({"model": OmegaConf.structured(ModelConfig()), "quant": OmegaConf.structured(QuantConfig()),
                             "peft": OmegaConf.structured(PeftConfig(dropout=0.0)),
                             "paths": {"model_cache": MODEL_CACHE}})


def prepare(directory: Path, n_prompts: int) -> None:
    """policy/ (full SmolLM2), reward/ (+ seeded score head), the same two as alignlab adapters, prompts."""
    import torch
    from safetensors.torch import load_file, save_file

    from alignlab.data.store import data_home
    from alignlab.models import add_adapter, load_base, load_tokenizer

    if (directory / "prompts.jsonl").is_file():
        return
    cfg = _cfg()
    tok = load_tokenizer(cfg.model, MODEL_CACHE)
    load_base(cfg.model, cfg.quant, MODEL_CACHE).save_pretrained(directory / "policy")
    tok.save_pretrained(directory / "policy")
    torch.manual_seed(0)
    reward = load_base(cfg.model, cfg.quant, MODEL_CACHE, head="score")
    reward.save_pretrained(directory / "reward")
    tok.save_pretrained(directory / "reward")
    add_adapter(load_base(cfg.model, cfg.quant, MODEL_CACHE), cfg.peft, cfg.quant).save_pretrained(directory / "policy_adapter")
    adapter = add_adapter(load_base(cfg.model, cfg.quant, MODEL_CACHE, head="score"), cfg.peft, cfg.quant, head="score")
    adapter.save_pretrained(directory / "reward_adapter")
    weights_file = directory / "reward_adapter" / "adapter_model.safetensors"
    weights = load_file(str(weights_file))  # fresh LoRA (B = 0): the adapter model equals reward/
    weights["base_model.model.score.weight"] = reward.score.weight.detach().clone()
    save_file(weights, str(weights_file))
    questions = [json.loads(l)["turns"][0] for l in data_home().file("prompts/vicuna_question.jsonl").open()]
    with open(directory / "prompts.jsonl", "w") as f:
        for q in questions[:n_prompts]:
            f.write(json.dumps({"prompt": [{"role": "user", "content": q}]}) + "\n")


def alignlab_side(models: Path, args, out: Path) -> None:
    import torch
    from omegaconf import OmegaConf

    from alignlab.rl.shared_model import SharedBaseModel
    from alignlab.rl.trainer import PPOTrainer
    from alignlab.stages.config import PPOStageConfig

    torch.manual_seed(0)
    h = OmegaConf.structured(PPOStageConfig(
        iterations=args.iterations, rollout_batch_size=args.batch, mini_batch_size=args.batch,
        ppo_epochs=args.ppo_epochs, max_new_tokens=args.response_length, temperature=0.7, kl_coef=0.05,
        learning_rate=1e-4, save_steps=10**6, max_prompt_length=512, seed=0))
    prompts = [json.loads(l)["prompt"] for l in (models / "prompts.jsonl").open()]
    shared = SharedBaseModel(_cfg(), models / "policy_adapter", models / "reward_adapter", reference="base")
    trainer = PPOTrainer(shared, h, prompts, "no" if args.precision == "fp32" else "bf16")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        trainer.train(Path(tmp) / "ckpt", Path(tmp) / "samples.jsonl")
        seconds = time.perf_counter() - start
    episodes = args.batch * args.iterations
    out.write_text(json.dumps({"impl": "alignlab", "episodes": episodes, "seconds": round(seconds, 2),
                               "episodes_per_s": episodes / seconds,
                               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def ensure_trl_venv() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / ".ready").is_file():
        print(f"creating {VENV} (torch==2.13.0, then {TRL} and peft) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", TRL, "peft"], check=True)
        (VENV / ".ready").touch()
    return python


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--response-length", type=int, default=32)
    p.add_argument("--iterations", type=int, default=8, help="x batch = episodes per run (64: > 60 s per side)")
    p.add_argument("--ppo-epochs", type=int, default=1)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16",
                   help="autocast of both sides (bf16: both libraries' default on a bf16-capable CPU)")
    p.add_argument("--repeats", type=int, default=REPEATS, help="runs per side, alternating sides")
    p.add_argument("--out", default="results/bench_ppo.json")
    p.add_argument("--side", choices=["alignlab"], help=argparse.SUPPRESS)
    p.add_argument("--models", help=argparse.SUPPRESS)
    p.add_argument("--side-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return alignlab_side(Path(args.models), args, Path(args.side_out))
    models = CACHE / "bench" / "ppo-models"
    models.mkdir(parents=True, exist_ok=True)
    prepare(models, n_prompts=max(64, args.batch * args.iterations))
    trl_python = ensure_trl_venv()
    settings = ["--response-length", str(args.response_length), "--iterations", str(args.iterations),
                "--ppo-epochs", str(args.ppo_epochs), "--precision", args.precision]
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1"}

    def run(command) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "side.json"
            subprocess.run([*command, str(out)], check=True, env=env)
            return json.loads(out.read_text())

    runs = alternate({
        "trl 0.29.1 PPOTrainer (baseline)": lambda i: run(
            [str(trl_python), str(HERE / "bench" / "trl_ppo_side.py"), "--policy", str(models / "policy"),
             "--reward", str(models / "reward"), "--prompts", str(models / "prompts.jsonl"),
             "--batch-size", str(args.batch), *settings, "--out"]),
        "alignlab PPO": lambda i: run(
            [sys.executable, __file__, "--side", "alignlab", "--models", str(models), "--batch", str(args.batch),
             *settings, "--side-out"]),
    }, args.repeats)
    trl_runs, ours = runs.values()
    label = f"P2 PPO vs trl {trl_runs[0]['version']} ({args.precision})"
    result = {
        "benchmark": "P2 PPO: alignlab vs trl 0.29.1 PPOTrainer",
        "settings": {"model": "embedded:smollm2-135m-instruct", "batch": args.batch,
                     "response_length": args.response_length, "iterations": args.iterations,
                     "episodes_per_run": args.batch * args.iterations, "ppo_epochs": args.ppo_epochs,
                     "precision": args.precision, "lora": "r=16 all-linear", "repeats": args.repeats},
        "figures": [
            figure(f"{label}: throughput", "episodes/s", [r["episodes_per_s"] for r in trl_runs],
                   [r["episodes_per_s"] for r in ours], GOALS["throughput_ratio"]),
            figure(f"{label}: peak RSS", "MiB", [r["peak_rss_mib"] for r in trl_runs],
                   [r["peak_rss_mib"] for r in ours], GOALS["peak_rss_ratio"]),
        ],
        "runs": {"baseline": trl_runs, "alignlab": ours},
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
