"""PPO recipe: policy = the upstream SFT/DPO adapter on one shared base (reference, value and
reward as adapters on the same base) -> prompts -> alignlab.rl.PPOTrainer -> policy adapter,
value adapter, per-iteration metrics and sample responses.

The loop is ours (alignlab/rl), on transformers + peft + accelerate: trl 1.x removed PPOTrainer.
The reward is the `reward` upstream node or a programmatic `stage.ppo.reward_fn`.
"""
from __future__ import annotations

import os
from typing import Dict

from omegaconf import OmegaConf

from alignlab.errors import ConfigError
from alignlab.models.precision import mixed_precision
from alignlab.stages.context import StageContext

# Set by `accelerate launch` for engines that shard parameters, which adapter switching on one
# shared base cannot follow.
SHARDING_ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


def run(ctx: StageContext) -> Dict[str, float]:
    from transformers import set_seed

    from alignlab.rl import rewards
    from alignlab.rl.shared_model import SharedBaseModel
    from alignlab.rl.trainer import PPOTrainer

    h = ctx.hparams
    for var, engine in SHARDING_ENGINES.items():
        if os.environ.get(var, "").lower() in ("1", "true"):
            raise ConfigError(f"pipeline.nodes.{ctx.node}: the ppo stage runs under plain data parallelism only "
                              f"(its models are adapters on one shared base); this process was launched with "
                              f"{engine}: use accelerate/ddp.yaml for ppo")
    set_seed(h.seed)
    reward_node, policy_node = ctx.upstream.get("reward"), ctx.upstream.get("policy")
    reward_fn = OmegaConf.to_container(h.reward_fn, resolve=True) if h.reward_fn else None
    if (reward_node is None) == (reward_fn is None):
        raise ConfigError(f"pipeline.nodes.{ctx.node}: a ppo node needs exactly one reward source: "
                          "a `reward:` upstream node or stage.ppo.reward_fn")
    for role, art in (("policy", policy_node), ("reward", reward_node)):
        if art is not None and art.full_model_dir.is_dir():
            raise ConfigError(f"pipeline.nodes.{ctx.node}.{role}: PPO shares one base through LoRA adapters; "
                              f"'{art.node}' was fully fine-tuned (peft=none)")
    shared = SharedBaseModel(
        ctx.cfg,
        policy_adapter=policy_node.adapter_dir if policy_node else None,
        reward_adapter=reward_node.adapter_dir if reward_node else None,
        reference=h.reference, value_init=h.value_init, gradient_checkpointing=h.gradient_checkpointing,
    )
    trainer = PPOTrainer(shared, h, [row["prompt"] for row in ctx.data.train], mixed_precision(h.mixed_precision),
                         reward_fn=rewards.resolve(reward_fn) if reward_fn else None, log_fn=ctx.tracker.log,
                         node=ctx.node, rewind_fn=ctx.tracker.rewind)
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = trainer.train(ctx.checkpoint_dir, ctx.work_dir / "samples.jsonl")
    if trainer.accelerator.is_main_process:
        trainer.export_policy(ctx.output_model_dir)
        shared.save_value(ctx.work_dir / "value")
        ctx.tracker.table("samples", ctx.work_dir / "samples.jsonl")
    first = trainer.history[0]
    return {
        "iterations": trainer.iteration,
        "resumed_from_iteration": trainer.resumed_from,
        "episodes": final.get("episodes"),
        "initial/reward_mean": first["reward/mean"],
        "final/reward_mean": final["reward/mean"],
        "final/kl": final["kl"],
        "final/kl_coef": final["kl_coef"],
        "final/entropy": final["entropy"],
        "final/response_length": final["response_length"],
    }
