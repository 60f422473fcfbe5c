"""Stage recipes (each module exposes `run(ctx) -> metrics`) and what the planner knows of each kind."""
from __future__ import annotations

import importlib
from types import ModuleType

STAGE_MODULES = {
    "sft": "alignlab.stages.sft",
    "reward": "alignlab.stages.reward",
    "dpo": "alignlab.stages.dpo",
    "ppo": "alignlab.stages.ppo",
}

BASE = "base"  # the base model's name in comparisons, evaluations and reports
GENERATIVE_STAGES = ("sft", "dpo", "ppo")  # stages whose artifact is a causal LM
UPSTREAM_ROLES = ("init", "policy", "reward")
DEFAULT_DATA = {"sft": "sft", "reward": "preference", "dpo": "preference", "ppo": "prompts"}  # key into cfg.data
DATA_KINDS = {"sft": "sft", "reward": "preference", "dpo": "preference", "ppo": "prompt"}  # rows each kind trains on

# Which upstream roles each stage accepts, and which stage kinds may fill them.
UPSTREAM = {
    "sft": {"init": ("sft",)},
    "reward": {"init": ("sft",)},
    "dpo": {"policy": ("sft", "dpo")},
    "ppo": {"policy": ("sft", "dpo", "ppo"), "reward": ("reward",)},
}


def stage_module(kind: str) -> ModuleType:
    return importlib.import_module(STAGE_MODULES[kind])
