"""Slow: PPO on the embedded SmolLM2 raises a programmatic reward while the KL stays bounded."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import alignlab_env

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")


@pytest.mark.slow
def test_ppo_raises_target_length_reward(data_home, model_cache, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [ALIGNLAB, "experiment=ppo_length", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    artifact = Path(json.loads((run_dir / "summary.json").read_text())["nodes"]["ppo"]["artifact"])
    history = [json.loads(l) for l in (artifact / "metrics.jsonl").read_text().splitlines()]
    rewards = [h["reward/mean"] for h in history]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    assert last > first + 0.2, rewards  # seeded run: the last two iterations beat the first two
    assert all(abs(h["kl"]) < 20.0 for h in history), [h["kl"] for h in history]
