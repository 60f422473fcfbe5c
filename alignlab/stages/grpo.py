"""GRPO and RLOO recipe (one module, two registered kinds; they differ in trl's trainer class and a
few loss settings): policy = the upstream SFT/DPO adapter (trainable) on the base -> prompts ->
completions sampled and scored by trl GRPOTrainer / RLOOTrainer -> adapter, per-step reward metrics
and sample completions (samples.jsonl).

Rewards: programmatic or verifiable functions named by `_target_` (alignlab.rl.rewards, e.g.
GSM8K correctness against each prompt row's `reference`) and/or a `reward:` upstream node, scored
by its `RewardScorer` (on its own copy of the base) exactly as PPO's reward model reads a response;
trl combines them with `reward_weights` and logs each as `rewards/<name>/mean`.
The reference is trl's frozen "ref" copy of the starting adapter on the same base (as in DPO);
with beta = 0 trl keeps no reference.
"""
from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from alignlab.stages import trl_recipe
from alignlab.stages.config import REWARD_NODE
from alignlab.stages.context import StageContext

TRAINERS = {"grpo": ("GRPOConfig", "GRPOTrainer"), "rloo": ("RLOOConfig", "RLOOTrainer")}
OWN_SETTINGS = {"grpo": ("loss_type", "scale_rewards"), "rloo": ("normalize_advantages",)}
SAMPLES = "samples.jsonl"


class Samples:
    """The first `keep` completions of each generated batch with every reward's value, appended to a
    JSONL file once the batch's last reward function has scored it (trl calls them in order)."""

    def __init__(self, path: Path, keep: int, weights: Dict[str, float]):
        from accelerate import PartialState

        self.path, self.weights, self.rows = path, weights, []
        self.keep = keep if PartialState().is_main_process else 0  # each process scores its own share

    def add(self, name: str, step: int, prompts: Sequence, responses: Sequence[str], values: Sequence[float]) -> None:
        if not self.keep:
            return
        if name == next(iter(self.weights)):
            self.rows = [{"step": step, "prompt": p[-1]["content"] if isinstance(p, list) else p, "completion": r}
                         for p, r in zip(prompts[:self.keep], responses[:self.keep])]
        for row, value in zip(self.rows, values):
            row[name] = value
        if name == list(self.weights)[-1]:
            with open(self.path, "a", encoding="utf-8") as f:
                for row in self.rows:
                    row["reward"] = sum(w * row[n] for n, w in self.weights.items())
                    f.write(json.dumps(row) + "\n")


class TrlReward:
    """An alignlab reward `fn(prompts, responses, **fields)` called as trl calls reward functions
    (keywords, conversational completions, the dataset's extra columns); it gets the row fields its
    signature names and `finished` (the completion ended with EOS). trl logs it under `__name__`."""

    def __init__(self, name: str, fn: Callable, eos_ids: Sequence[int], samples: Samples):
        self.__name__, self.fn, self.eos_ids, self.samples = name, fn, set(eos_ids), samples
        params = list(inspect.signature(fn).parameters.values())[2:]
        self.everything = any(p.kind is p.VAR_KEYWORD for p in params)
        self.fields = {p.name for p in params}

    def __call__(self, prompts, completions, completion_ids, trainer_state=None, **columns) -> List[float]:
        responses = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        available = {**{k: v for k, v in columns.items() if k not in ("log_extra", "log_metric")},
                     "finished": [bool(ids) and ids[-1] in self.eos_ids for ids in completion_ids]}
        kwargs = {k: v for k, v in available.items() if self.everything or k in self.fields}
        values = [float(v) for v in self.fn(prompts, responses, **kwargs)]
        self.samples.add(self.__name__, trainer_state.global_step if trainer_state else 0, prompts, responses, values)
        return values


def reward_node_fn(ctx: StageContext) -> Optional[Callable]:
    """fn(prompts, responses, finished) scoring with the `reward` upstream node, or None."""
    from alignlab.errors import ConfigError
    from alignlab.stages.reward import RewardScorer

    node = ctx.upstream.get("reward")
    if node is None:
        return None
    if node.full_model_dir.is_dir():
        raise ConfigError(f"pipeline.nodes.{ctx.node}.reward: '{node.node}' was fully fine-tuned (peft=none); "
                          "its scorer loads a LoRA reward adapter")
    h = ctx.hparams
    scorer = RewardScorer.from_artifact(node.path, ctx.cfg, h.reward_max_length, h.score_batch_size)

    def reward_model(prompts, responses, finished):
        return scorer.score(prompts, responses, finished).tolist()

    return reward_model


def reward_functions(ctx: StageContext, eos_ids: Sequence[int]):
    """(trl reward functions, their weights, the samples recorder), reward functions first, then the node."""
    from alignlab.rl import rewards

    h = ctx.hparams
    fns = {name: rewards.resolve(OmegaConf.to_container(spec, resolve=True), key=f"stage.{ctx.stage}.reward_fns.{name}")
           for name, spec in h.reward_fns.items()}
    node_fn = reward_node_fn(ctx)
    if node_fn is not None:
        fns[REWARD_NODE] = node_fn
    weights = {name: float(h.reward_weights.get(name, 1.0)) for name in fns}
    samples = Samples(ctx.work_dir / SAMPLES, h.sample_responses, weights)
    return [TrlReward(name, fn, eos_ids, samples) for name, fn in fns.items()], list(weights.values()), samples


def online_arguments(stage: str, h, reward_weights: List[float]) -> Dict[str, Any]:
    """The GRPOConfig/RLOOConfig fields a `stage` node sets beyond the shared trainer fields (also
    what scripts/bench_grpo.py hands its bare trl baseline)."""
    return dict(
        num_generations=h.num_generations,
        max_completion_length=h.max_completion_length,
        temperature=h.temperature,
        beta=h.beta,
        epsilon=h.epsilon,
        epsilon_high=h.epsilon_high,
        num_iterations=h.num_iterations,
        steps_per_generation=h.steps_per_generation,
        mask_truncated_completions=h.mask_truncated_completions,
        reward_weights=reward_weights,
        disable_dropout=h.disable_dropout,
        remove_unused_columns=False,  # the rows' extra fields (e.g. `reference`) reach the reward functions
        **{key: h[key] for key in OWN_SETTINGS[stage]},
    )


def build_trainer(ctx: StageContext):
    import trl
    from transformers import set_seed

    h = ctx.hparams
    set_seed(h.seed)
    config_cls, trainer_cls = (getattr(trl, name) for name in TRAINERS[ctx.stage])
    model = trl_recipe.policy_model(ctx, "policy")
    eos = model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    funcs, weights, _ = reward_functions(ctx, eos_ids)
    args = trl_recipe.trainer_args(ctx, config_cls, held_out=False, **online_arguments(ctx.stage, h, weights))
    # Completions are generated from the training prompts; held-out accuracy is the eval group's job.
    return trl_recipe.trainer(ctx, trainer_cls, model, args, held_out=False, reward_funcs=funcs)


def reward_history(log_history: List[Dict[str, Any]]) -> Dict[str, float]:
    """Mean reward of the first and last thirds of the logged steps, their difference and its standard
    error (the two thirds' step means as independent samples), and the last step's values."""
    logs = [entry for entry in log_history if "reward" in entry]
    if not logs:
        return {}
    rewards = [entry["reward"] for entry in logs]
    third = max(1, len(rewards) // 3)
    first, last = rewards[:third], rewards[-third:]

    def mean_var(xs):
        m = sum(xs) / len(xs)
        return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else float("nan"))

    (m1, v1), (m2, v2) = mean_var(first), mean_var(last)
    final = logs[-1]
    out = {"initial/reward_mean": rewards[0], "final/reward_mean": rewards[-1], "reward/first_mean": m1,
           "reward/last_mean": m2, "reward/gain": m2 - m1, "reward/gain_se": math.sqrt(v1 / len(first) + v2 / len(last)),
           "reward/steps_per_third": third}
    out.update({f"final/{key}": value for key, value in final.items()
                if key.startswith("rewards/") or key in ("kl", "entropy", "completions/mean_length",
                                                         "completions/clipped_ratio", "frac_reward_zero_std")})
    return out


def run(ctx: StageContext) -> Dict[str, float]:
    from alignlab.tracking import cut_jsonl

    trainer = build_trainer(ctx)
    resumed = trl_recipe.checkpoint_step(trl_recipe.last_checkpoint(ctx))
    cut_jsonl(ctx.work_dir / SAMPLES, lambda row: row.get("step", 0) < resumed)  # regenerated after a resume
    # The frozen "ref" copy only serves training: the artifact keeps the policy adapter alone.
    metrics = trl_recipe.fit(ctx, trainer, drop_adapters=("ref",))
    metrics.update(reward_history(trainer.state.log_history))
    if trainer.is_world_process_zero():
        ctx.tracker.table("samples", ctx.work_dir / SAMPLES)
    return metrics
