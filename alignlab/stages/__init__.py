"""The stage registry: what the planner, cache, evaluations, judge, report and grid summary know
of each stage kind, declared once per kind (`StageSpec`), and the recipes behind them.

A recipe module exposes `run(ctx) -> metrics`. Adding a method is one recipe module, one
`register(StageSpec(...))` and (optionally) a conf/stage file with its defaults; nothing else
names the kind. Specs hold only light objects (the structured config class, names, a preflight
check), so reading them imports no torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from alignlab.errors import ConfigError
from alignlab.stages import config as stage_config

BASE = "base"  # the base model's name in comparisons, evaluations and reports
UPSTREAM_ROLES = ("init", "policy", "reward")


@dataclass(frozen=True)
class StageSpec:
    """One stage kind."""

    kind: str
    recipe: str  # module with run(ctx) -> metrics
    config: type  # structured config of `stage.<kind>` and of a node's `hparams`
    data_kind: str  # rows it trains on: sft | preference | prompt
    default_data: str  # key into cfg.data when a node names none
    upstream: Mapping[str, Tuple[str, ...]]  # role -> stage kinds that may fill it
    generative: bool  # its artifact is a causal LM: evaluated for forgetting and judged
    headline: Tuple[str, ...] = ()  # metrics of summary columns (report, grid summary, W&B compare run)
    curves: Tuple[str, ...] = ()  # metrics.jsonl series the report plots
    rival: bool = False  # judged by default against every node of another rival kind (e.g. DPO vs PPO)
    version: int = 1  # bumped when the recipe's semantics change: part of every node key
    # (cfg, node name, the node's settings, preflight's Checked) -> problems, checked before anything loads
    check: Optional[Callable] = field(default=None, compare=False)


REGISTRY: Dict[str, StageSpec] = {}


def register(spec: StageSpec) -> StageSpec:
    """Add (or replace) a stage kind; call `alignlab.config.register_configs()` after it so the
    config schema holds its settings."""
    REGISTRY[spec.kind] = spec
    return spec


def spec(kind: str) -> StageSpec:
    if kind not in REGISTRY:
        raise ConfigError(f"unknown stage '{kind}'; known: {', '.join(REGISTRY)}")
    return REGISTRY[kind]


def generative(kind: str) -> bool:
    return kind in REGISTRY and REGISTRY[kind].generative


def stage_module(kind: str) -> ModuleType:
    return importlib.import_module(spec(kind).recipe)


def node_hparams(cfg, name: str):
    """A node's settings: `stage.<kind>` with the node's own `hparams` merged over it, checked
    against the stage's schema (an unknown key or a wrong type names the node's key)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    node = cfg.pipeline.nodes[name]
    if not node.hparams:
        return cfg.stage[node.stage]
    try:
        return OmegaConf.merge(cfg.stage[node.stage], node.hparams)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or ""
        key = key.split(".", 2)[-1] if key.startswith("stage.") else key
        raise ConfigError(f"pipeline.nodes.{name}.hparams.{key}: {str(err.msg).splitlines()[0]}") from None


register(StageSpec(
    kind="sft", recipe="alignlab.stages.sft", config=stage_config.SFTStageConfig, data_kind="sft",
    default_data="sft", upstream={"init": ("sft",)}, generative=True,
    headline=("eval_loss", "train_loss"), curves=("loss", "eval_loss")))
register(StageSpec(
    kind="reward", recipe="alignlab.stages.reward", config=stage_config.RewardStageConfig, data_kind="preference",
    default_data="preference", upstream={"init": ("sft",)}, generative=False,
    headline=("eval_accuracy", "eval_margin_mean"), curves=("loss", "eval_loss", "eval_accuracy")))
register(StageSpec(
    kind="dpo", recipe="alignlab.stages.dpo", config=stage_config.DPOStageConfig, data_kind="preference",
    default_data="preference", upstream={"policy": ("sft", "dpo")}, generative=True, rival=True,
    headline=("eval_rewards/accuracies", "eval_rewards/margins"),
    curves=("loss", "eval_loss", "rewards/accuracies", "rewards/margins"), check=stage_config.dpo_problems))
register(StageSpec(
    kind="ppo", recipe="alignlab.stages.ppo", config=stage_config.PPOStageConfig, data_kind="prompt",
    default_data="prompts", upstream={"policy": ("sft", "dpo", "ppo"), "reward": ("reward",)}, generative=True,
    rival=True, headline=("final/reward_mean", "final/kl"),
    curves=("reward/mean", "reward/with_kl_mean", "kl", "loss/policy", "loss/value"),
    check=stage_config.ppo_problems))

ONLINE_RL = dict(recipe="alignlab.stages.grpo", data_kind="prompt", default_data="prompts", generative=True, rival=True,
                 headline=("final/reward_mean", "reward/gain"),
                 curves=("reward", "kl", "entropy", "completions/mean_length", "completions/clipped_ratio"),
                 check=stage_config.online_rl_problems)
register(StageSpec(kind="grpo", config=stage_config.GRPOStageConfig,
                   upstream={"policy": ("sft", "dpo", "grpo"), "reward": ("reward",)}, **ONLINE_RL))
register(StageSpec(kind="rloo", config=stage_config.RLOOStageConfig,
                   upstream={"policy": ("sft", "dpo", "rloo"), "reward": ("reward",)}, **ONLINE_RL))


def headline(kinds) -> Tuple[str, ...]:
    """The headline metrics of these stage kinds, in registry order, each once (unknown kinds: none)."""
    kinds = set(kinds)  # once: `kinds` may be a generator
    return tuple(dict.fromkeys(m for k, sp in REGISTRY.items() if k in kinds for m in sp.headline))


def rivals(kinds: Mapping[str, str]) -> List[Tuple[str, str]]:
    """Pairs of nodes (by name -> kind) of two different rival kinds, in node order."""
    names = [n for n, k in kinds.items() if k in REGISTRY and REGISTRY[k].rival]
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if kinds[a] != kinds[b]]
register(StageSpec(
    kind="kto", recipe="alignlab.stages.kto", config=stage_config.KTOStageConfig, data_kind="preference",
    default_data="preference", upstream={"policy": ("sft",)}, generative=True, rival=True,
    headline=("eval_rewards/margins", "eval_kl"),
    curves=("loss", "eval_loss", "rewards/margins", "kl"), check=stage_config.kto_problems))
register(StageSpec(
    kind="orpo", recipe="alignlab.stages.reference_free", config=stage_config.ORPOStageConfig,
    data_kind="preference", default_data="preference", upstream={"policy": ("sft",)}, generative=True, rival=True,
    headline=("eval_rewards/accuracies", "eval_rewards/margins", "eval_log_odds_ratio"),
    curves=("loss", "eval_loss", "rewards/accuracies", "log_odds_ratio", "nll_loss")))
register(StageSpec(
    kind="simpo", recipe="alignlab.stages.reference_free", config=stage_config.SimPOStageConfig,
    data_kind="preference", default_data="preference", upstream={"policy": ("sft",)}, generative=True, rival=True,
    headline=("eval_rewards/accuracies", "eval_rewards/margins"),
    curves=("loss", "eval_loss", "rewards/accuracies", "rewards/margins")))
register(StageSpec(
    kind="online_dpo", recipe="alignlab.stages.online_dpo", config=stage_config.OnlineDPOStageConfig,
    data_kind="prompt", default_data="prompts",
    upstream={"policy": ("sft", "dpo", "online_dpo"), "reward": ("reward",)}, generative=True, rival=True,
    headline=("labelled_pairs", "skipped_inconsistent", "skipped_ties", "final/rewards/margins", "train_loss"),
    curves=("loss", "pairs/labelled", "pairs/inconsistent", "pairs/tie", "rewards/margins", "pairs/label_margin"),
    check=stage_config.online_dpo_problems))
