"""Benchmark: LoRA training step of the embedded SmolLM2 with bf16 autocast vs the fp32 baseline.

Each side runs --repeats times (3), alternating, --steps timed steps per run (11: over 60 s per
run in bf16). Writes the median, min and max seconds per step of each and the ratio of medians
(bf16 / fp32) to results/bench_precision.json.
Usage: .venv/bin/python scripts/bench_precision.py [--steps 11 --repeats 3]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench_common import REPEATS, alternate, figure, write_result

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
    parser.add_argument("--steps", type=int, default=11, help="timed steps per run (11: over 60 s in bf16)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs per side, alternating sides")
    parser.add_argument("--out", default="results/bench_precision.json")
    args = parser.parse_args()

    model = add_adapter(load_base(ModelConfig(), QuantConfig(), str(MODEL_CACHE)), PeftConfig(), QuantConfig())
    batch = torch.randint(0, 49000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    runs = alternate({"fp32": lambda i: {"seconds_per_step": seconds_per_step(model, batch, False, args.steps)},
                      "bf16 autocast": lambda i: {"seconds_per_step": seconds_per_step(model, batch, True, args.steps)}},
                     args.repeats)
    fp32, bf16 = runs.values()
    result = {
        "benchmark": "lora_step_smollm2_135m",
        "settings": {"batch": args.batch, "seq": args.seq, "steps": args.steps, "repeats": args.repeats},
        "figures": [figure("bf16 autocast vs fp32 (LoRA step)", "s/step", [r["seconds_per_step"] for r in fp32],
                           [r["seconds_per_step"] for r in bf16], None, "fp32", "bf16 autocast")],
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
