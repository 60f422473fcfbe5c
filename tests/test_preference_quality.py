"""Slow: the preference stages learn something real on the embedded SmolLM2 with HH-RLHF pairs."""
from __future__ import annotations

import sys
from pathlib import Path

import json
import subprocess

import pytest

from conftest import alignlab_env

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")  # the console script of this venv


@pytest.mark.slow
def test_hh_preference_experiment_clears_accuracy_bars(data_home, model_cache, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [ALIGNLAB, "experiment=hh_preference", "logger=none", "eval=none", "judge=none",
           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    nodes = json.loads((run_dir / "summary.json").read_text())["nodes"]
    rm, dpo = nodes["rm"]["metrics"], nodes["dpo"]["metrics"]
    assert rm["eval_pairs"] >= 90
    assert rm["eval_accuracy"] > 0.60, rm
    assert dpo["eval_rewards/accuracies"] > 0.55, dpo
