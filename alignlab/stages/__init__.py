"""Stage recipes. Each module exposes `DATA_KIND` and `run(ctx) -> metrics`."""
from __future__ import annotations

import importlib
from types import ModuleType

STAGE_MODULES = {
    "sft": "alignlab.stages.sft",
    "reward": "alignlab.stages.reward",
    "dpo": "alignlab.stages.dpo",
    "ppo": "alignlab.stages.ppo",
}

# Which upstream roles each stage accepts, and which stage kinds may fill them.
UPSTREAM = {
    "sft": {"init": ("sft",)},
    "reward": {"init": ("sft",)},
    "dpo": {"policy": ("sft", "dpo")},
    "ppo": {"policy": ("sft", "dpo", "ppo"), "reward": ("reward",)},
}


def stage_module(kind: str) -> ModuleType:
    return importlib.import_module(STAGE_MODULES[kind])
