"""Benchmark P3: peak memory of PPO's four models on one shared base (alignlab) vs four separately
loaded models (the baseline: policy, reference, value and reward each with their own base, as
trl's PPOTrainer holds them).

Each setup runs in its own process and does the same work on the embedded SmolLM2: a reward
forward pass, a reference forward pass, and policy and value forward+backward passes over one
batch, in bf16 autocast (both libraries' default on a bf16-capable CPU). Both setups are measured
twice: keeping every activation for the backward pass, and with activation checkpointing on the
trained models (stage.ppo.gradient_checkpointing), where the weights are what remains and the
sharing shows in full. Each setup runs --repeats times (3), alternating setups; peak RSS hardly
moves between runs and does not grow with a run's length, so a run is one batch (not the 60 s the
timed benchmarks last). Writes results/bench_ppo_memory.json with each setup's median, min and max
peak RSS and the ratios of medians.
At 135M parameters the runtime and activations are most of a process's peak; `--model
random-llama` measures the same work on a randomly initialised ~1B Llama with bf16 weights (built
from a config, no download), where the weights dominate and the ratio approaches the weight
ratio (one base + small adapters vs four bases).
Usage: .venv/bin/python scripts/bench_ppo_memory.py [--quant none|bnb_4bit] [--batch 4 --seq 160] [--precision bf16|no]
[--model smollm2|random-llama --layers 22] [--repeats 3] [--out results/bench_ppo_memory.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench_common import REPEATS, alternate, figure, write_result

MODEL_CACHE = str(Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab")) / "models")
GOAL = 0.4


def random_llama(layers: int) -> Path:
    """A randomly initialised Llama with bf16 weights and SmolLM2's tokenizer, built from a config
    (no download): hidden 2048, MLP 5632, 32 heads (4 KV heads; TinyLlama-1.1B's shape) and
    `layers` layers (22: 1.07B parameters). Saved once under the bench cache."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from alignlab.models import ModelConfig, load_tokenizer

    directory = Path(MODEL_CACHE).parent / "bench" / f"random-llama-{layers}l"
    if (directory / "model.safetensors.index.json").is_file() or (directory / "model.safetensors").is_file():
        return directory
    tokenizer = load_tokenizer(ModelConfig(), MODEL_CACHE)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, dtype="bfloat16")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    print(f"built a random Llama of {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters -> {directory}")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _cfg(quant: str, model: str = "smollm2", layers: int = 22):
    """smollm2: the embedded SmolLM2-135M (its fp32 default); random-llama: `random_llama(layers)` in bf16."""
    from alignlab.models import ModelConfig, PeftConfig, QuantConfig

    base = ModelConfig() if model == "smollm2" else ModelConfig(name_or_path=str(random_llama(layers)), dtype="bfloat16")
    return OmegaConf.create({"model": OmegaConf.structured(base),
                             "quant": OmegaConf.structured(QuantConfig(method=quant)),
                             "peft": OmegaConf.structured(PeftConfig(dropout=0.0)), "paths": {"model_cache": MODEL_CACHE}})


def make_adapters(cfg, directory: Path) -> None:
    """A policy LoRA adapter and a reward LoRA adapter with its score head, as pipeline nodes save them."""
    from alignlab.models import add_adapter, load_base

    for name, head in (("policy", "causal_lm"), ("reward", "score")):
        model = add_adapter(load_base(cfg.model, cfg.quant, MODEL_CACHE, head=head), cfg.peft, cfg.quant, head=head)
        model.save_pretrained(str(directory / name))


def _batch(tokenizer, batch: int, seq: int):
    ids = torch.randint(100, tokenizer.vocab_size - 100, (batch, seq), generator=torch.Generator().manual_seed(0))
    return ids, torch.ones_like(ids)


def run_shared(cfg, adapters: Path, batch: int, seq: int, checkpointing: bool) -> None:
    from alignlab.rl.shared_model import VALUE, SharedBaseModel

    m = SharedBaseModel(cfg, adapters / "policy", adapters / "reward", gradient_checkpointing=checkpointing)
    ids, mask = _batch(m.tokenizer, batch, seq)
    context = seq // 2
    with torch.no_grad():
        m.use("reward")
        m._hidden(ids, mask)
        m.use("default")
        with m.reference():
            m.response_logits(ids, mask, context, 1.0)
    m.response_logits(ids, mask, context, 1.0).logsumexp(-1).mean().backward()
    with m.using(VALUE):
        m.values(ids, mask, context).mean().backward()


def run_separate(cfg, adapters: Path, batch: int, seq: int, checkpointing: bool) -> None:
    from alignlab.models import load_adapter, load_base, load_tokenizer

    policy = load_adapter(load_base(cfg.model, cfg.quant, MODEL_CACHE), adapters / "policy", trainable=True)
    ref = load_base(cfg.model, cfg.quant, MODEL_CACHE).eval()
    value = load_adapter(load_base(cfg.model, cfg.quant, MODEL_CACHE, head="score"), adapters / "reward", trainable=True)
    reward = load_adapter(load_base(cfg.model, cfg.quant, MODEL_CACHE, head="score"), adapters / "reward",
                          trainable=False).eval()
    if checkpointing:
        for model in (policy, value):
            model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
            model.train()  # checkpointing acts in training mode; the adapters have no dropout
    ids, mask = _batch(load_tokenizer(cfg.model, MODEL_CACHE), batch, seq)
    with torch.no_grad():
        reward(input_ids=ids, attention_mask=mask)
        ref(input_ids=ids, attention_mask=mask)
    policy(input_ids=ids, attention_mask=mask).logits[:, seq // 2:].logsumexp(-1).mean().backward()
    value(input_ids=ids, attention_mask=mask).logits.mean().backward()


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(setup: str, args, adapters: Path, checkpointing: bool) -> None:
    import peft  # noqa: F401 - the runtime, imported before the baseline reading
    import transformers  # noqa: F401

    import alignlab.rl.shared_model  # noqa: F401

    from alignlab.models.precision import autocast

    cfg = _cfg(args.quant, args.model, args.layers)
    runtime = _peak_mib()
    with autocast(args.precision):
        (run_shared if setup == "shared" else run_separate)(cfg, adapters, args.batch, args.seq, checkpointing)
    print(json.dumps({"peak_rss_mib": _peak_mib(), "runtime_rss_mib": runtime}))


def measure(setup: str, args, adapters: Path, checkpointing: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", setup, "--adapters", str(adapters), "--quant", args.quant,
                          "--batch", str(args.batch), "--seq", str(args.seq), "--precision", args.precision,
                          "--model", args.model, "--layers", str(args.layers),
                          *(["--checkpointing"] if checkpointing else [])],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quant", default="none", choices=["none", "bnb_4bit"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=160)
    parser.add_argument("--precision", default="bf16", choices=["no", "bf16"],
                        help="autocast of both setups (bf16: alignlab's and trl's default on a bf16-capable CPU)")
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "random-llama"],
                        help="the embedded SmolLM2-135M, or a random bf16 Llama (~1B at 22 layers: weights dominate)")
    parser.add_argument("--layers", type=int, default=22, help="layers of the random Llama (22: 1.07B parameters)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs per setup, alternating setups")
    parser.add_argument("--out", default="results/bench_ppo_memory.json")
    parser.add_argument("--child", choices=["shared", "separate"], help=argparse.SUPPRESS)
    parser.add_argument("--adapters", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args, Path(args.adapters), args.checkpointing)
    figures, runs = [], {}
    size = "SmolLM2-135M" if args.model == "smollm2" else f"random Llama {args.layers} layers, bf16"
    with tempfile.TemporaryDirectory(prefix="alignlab-bench-") as tmp:
        make_adapters(_cfg(args.quant, args.model, args.layers), Path(tmp))
        for name, checkpointing in (("all_activations", False), ("activation_checkpointing", True)):
            print(f"[{name}] four separate models (baseline) and one shared base, alternating ...", flush=True)
            runs[name] = alternate({
                "four separate models": lambda i: measure("separate", args, Path(tmp), checkpointing),
                "one shared base + adapters": lambda i: measure("shared", args, Path(tmp), checkpointing),
            }, args.repeats)
            separate, shared = runs[name].values()
            figures.append(figure(f"P3 PPO memory, shared base vs four models ({size}, {name.replace('_', ' ')})", "MiB",
                                  [r["peak_rss_mib"] for r in separate], [r["peak_rss_mib"] for r in shared],
                                  f"<= {GOAL}"))
            # Without the Python/torch runtime both processes carry (its RSS before any model is built).
            figures[-1]["ratio_above_runtime"] = round(
                statistics.median(r["peak_rss_mib"] - r["runtime_rss_mib"] for r in shared)
                / statistics.median(r["peak_rss_mib"] - r["runtime_rss_mib"] for r in separate), 3)
    result = {
        "benchmark": "P3 PPO memory: one shared base vs four models",
        "settings": {"model": "embedded:smollm2-135m-instruct" if args.model == "smollm2" else
                     f"random Llama, {args.layers} layers, hidden 2048, bf16 weights", "quant": args.quant,
                     "batch": args.batch, "seq": args.seq, "precision": args.precision, "repeats": args.repeats},
        "figures": figures,
        "runs": runs,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
