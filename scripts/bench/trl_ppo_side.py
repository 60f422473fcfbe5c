"""trl 0.29.1 side of scripts/bench_ppo.py: run inside the throwaway trl venv (no alignlab import).

trl's PPOTrainer holds four models: the policy (LoRA via peft_config, the reference is the policy
with its adapter disabled), a full value model initialised from the reward model, and the reward
model. Writes episodes/s and peak RSS as JSON.
"""
import argparse
import json
import resource
import tempfile
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import trl
from trl.experimental.ppo import PPOConfig, PPOTrainer


def main():
    p = argparse.ArgumentParser()
    for name in ("--policy", "--reward", "--prompts", "--out"):
        p.add_argument(name, required=True)
    for name, default in (("--batch-size", 8), ("--response-length", 32), ("--iterations", 3), ("--ppo-epochs", 1),
                          ("--seed", 0)):
        p.add_argument(name, type=int, default=default)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    a = p.parse_args()
    tok = AutoTokenizer.from_pretrained(a.policy, padding_side="left")
    # trl's PPO finds padding by token id; SmolLM2 pads with its EOS <|im_end|>, which also ends
    # every chat turn, so trl would mask real tokens. Pad with the unused <|endoftext|> instead.
    if tok.pad_token_id == tok.eos_token_id:
        tok.pad_token = "<|endoftext|>"
    prompts = [json.loads(l)["prompt"] for l in open(a.prompts)]
    ids = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in prompts]
    dataset = Dataset.from_dict({"input_ids": [tok(t, add_special_tokens=False)["input_ids"] for t in ids]})
    policy = AutoModelForCausalLM.from_pretrained(a.policy, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(a.reward, num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(a.reward, num_labels=1, dtype=torch.float32)
    for model in (policy, reward, value):
        model.config.pad_token_id = tok.pad_token_id
    with tempfile.TemporaryDirectory() as out:
        args = PPOConfig(
            output_dir=out, per_device_train_batch_size=a.batch_size, local_rollout_forward_batch_size=a.batch_size,
            num_mini_batches=1, gradient_accumulation_steps=1, total_episodes=a.batch_size * a.iterations,
            num_ppo_epochs=a.ppo_epochs, response_length=a.response_length, stop_token="eos", missing_eos_penalty=1.0,
            temperature=0.7, kl_coef=0.05, learning_rate=1e-4, use_cpu=True, bf16=a.precision == "bf16", report_to="none",
            num_sample_generations=0, save_strategy="no", logging_steps=1, seed=a.seed,
        )
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                             value_model=value, train_dataset=dataset,
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                    task_type="CAUSAL_LM"))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    episodes = a.batch_size * a.iterations
    json.dump({"impl": "trl", "version": trl.__version__, "episodes": episodes, "seconds": round(seconds, 2),
               "episodes_per_s": episodes / seconds,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, open(a.out, "w"))


if __name__ == "__main__":
    main()
