"""Benchmark: LoRA training step of the embedded SmolLM2 with bf16 autocast vs the fp32 baseline.

Writes JSON (seconds per step for each, and the speed-up over the fp32 baseline) to
results/bench_precision.json. Usage: .venv/bin/python scripts/bench_precision.py [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench_common import write_result

from alignlab.models import ModelConfig, PeftConfig, QuantConfig, add_adapter, load_base

MODEL_CACHE = Path.home() / ".cache" / "alignlab" / "models"


def seconds_per_step(model, batch, autocast: bool, steps: int) -> float:
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--out", default="results/bench_precision.json")
    args = parser.parse_args()

    model = add_adapter(load_base(ModelConfig(), QuantConfig(), str(MODEL_CACHE)), PeftConfig(), QuantConfig())
    batch = torch.randint(0, 49000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    baseline = seconds_per_step(model, batch, autocast=False, steps=args.steps)
    bf16 = seconds_per_step(model, batch, autocast=True, steps=args.steps)
    result = {
        "benchmark": "lora_step_smollm2_135m",
        "shape": {"batch": args.batch, "seq": args.seq, "steps": args.steps},
        "baseline": {"name": "fp32", "seconds_per_step": baseline},
        "bf16_autocast": {"seconds_per_step": bf16},
        "speedup_vs_baseline": baseline / bf16,
    }
    print(json.dumps(write_result(args.out, result), indent=2))


if __name__ == "__main__":
    main()
