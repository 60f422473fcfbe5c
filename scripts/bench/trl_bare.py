"""The baseline of benchmark P1: SFT then DPO written directly against trl, peft and transformers
(no alignlab), with the arguments scripts/bench_overhead.py passes from alignlab's composed config.

Reads the exact rows alignlab trained on (JSON lines written by the benchmark), trains a LoRA SFT
adapter, evaluates it, saves it; continues it with DPO (trl adds the frozen "ref" copy), evaluates,
saves; prints per-stage seconds as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--rows", required=True)
    p.add_argument("--args", required=True, help="JSON: {sft: {...}, dpo: {...}, lora: {...}}")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    spec = json.loads(Path(a.args).read_text())
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    rows = {name: [json.loads(line) for line in (Path(a.rows) / f"{name}.jsonl").open()]
            for name in ("sft_train", "sft_eval", "dpo_train", "dpo_eval")}
    out = Path(a.out)
    seconds = {}

    start = time.perf_counter()
    set_seed(spec["sft"]["seed"])
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **spec["lora"]))
    trainer = SFTTrainer(model=model, args=SFTConfig(output_dir=str(out / "sft-ckpt"), **spec["sft"]),
                         train_dataset=Dataset.from_list(rows["sft_train"]),
                         eval_dataset=Dataset.from_list(rows["sft_eval"]), processing_class=tokenizer)
    trainer.train()
    trainer.evaluate()
    trainer.save_model(str(out / "sft"))
    seconds["sft"] = time.perf_counter() - start

    start = time.perf_counter()
    set_seed(spec["dpo"]["seed"])
    base = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out / "sft"), is_trainable=True)
    trainer = DPOTrainer(model=model, ref_model=None, args=DPOConfig(output_dir=str(out / "dpo-ckpt"), **spec["dpo"]),
                         train_dataset=Dataset.from_list(rows["dpo_train"]),
                         eval_dataset=Dataset.from_list(rows["dpo_eval"]), processing_class=tokenizer)
    trainer.train()
    trainer.evaluate()
    trainer.model.delete_adapter("ref")
    trainer.save_model(str(out / "dpo"))
    seconds["dpo"] = time.perf_counter() - start
    print(json.dumps(seconds))


if __name__ == "__main__":
    main()
