"""The baseline of the GRPO benchmark: trl's GRPOTrainer called directly (no alignlab) on the
rows and with the arguments scripts/bench_grpo.py takes from alignlab's composed config, with the
same two GSM8K rewards; trains a fresh LoRA adapter and saves it; prints its seconds as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--rows", required=True, help="JSON lines: prompt messages and reference")
    p.add_argument("--args", required=True, help="JSON: {grpo: {...}, lora: {...}}")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    start = time.perf_counter()
    spec = json.loads(Path(a.args).read_text())
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import GRPOConfig, GRPOTrainer

    from alignlab.rl.rewards import gsm8k_correct, gsm8k_format  # plain functions of text, as a user would write

    def correct(prompts, completions, reference, **_):
        return gsm8k_correct(prompts, [c[-1]["content"] for c in completions], reference)

    def format_(prompts, completions, **_):
        return gsm8k_format(prompts, [c[-1]["content"] for c in completions])

    rows = [json.loads(line) for line in Path(a.rows).open()]
    set_seed(spec["grpo"]["seed"])
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **spec["lora"]))
    trainer = GRPOTrainer(model=model, args=GRPOConfig(output_dir=str(Path(a.out) / "ckpt"), **spec["grpo"]),
                          reward_funcs=[correct, format_], train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(Path(a.out) / "grpo"))
    print(json.dumps({"grpo": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
