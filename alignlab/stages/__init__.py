"""Stage recipes. Each module exposes `DATA_KIND` and `run(ctx) -> metrics`."""
from __future__ import annotations

import importlib
from types import ModuleType

STAGE_MODULES = {
    "sft": "alignlab.stages.sft",
}


def stage_module(kind: str) -> ModuleType:
    return importlib.import_module(STAGE_MODULES[kind])
