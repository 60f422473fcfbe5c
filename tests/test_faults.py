"""Injected faults: a node killed with SIGKILL mid-training resumes from its last checkpoint on the
rerun (SFT, DPO, PPO) while finished nodes come from the cache; a diverging loss stops the node
with an error naming node and step, keeps its finite checkpoints and publishes nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignlab.errors import TrainingDivergedError
from alignlab.node_store import COMPLETE
from alignlab.pipeline import run
from conftest import TINY_PREFERENCE, TINY_SFT, alignlab_env

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
LENGTH_REWARD = ("+stage.ppo.reward_fn._target_=alignlab.rl.rewards.target_length", "+stage.ppo.reward_fn.words=4")
PPO = ("data.prompts.max_train_rows=24", "stage.ppo.rollout_batch_size=2", "stage.ppo.mini_batch_size=2",
       "stage.ppo.ppo_epochs=1", "stage.ppo.max_new_tokens=6", *LENGTH_REWARD)
# stage -> (pipeline and overrides with a long run of the killed node, its checkpoint files)
KILLED = {
    "sft": (("pipeline=sft", "stage.sft.max_steps=24", "stage.sft.save_steps=3"),
            "sft-*.partial/checkpoints/checkpoint-*/trainer_state.json"),
    "dpo": (("pipeline=sft_dpo", *TINY_PREFERENCE, "stage.sft.max_steps=2", "stage.dpo.max_steps=24",
             "stage.dpo.save_steps=3"),
            "dpo-*.partial/checkpoints/checkpoint-*/trainer_state.json"),
    "ppo": (("pipeline=sft_ppo", "stage.sft.max_steps=2", *PPO, "stage.ppo.iterations=16", "stage.ppo.save_steps=2"),
            "ppo-*.partial/checkpoints/iter-*/state.json"),
}


def _rows(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _logged_past_checkpoint(cache: Path, stage: str, checkpoints: str) -> bool:
    """The node has a checkpoint and metrics.jsonl rows for steps after it (a rerun resumes at it)."""
    saved = [int(n) for n in (p.parent.name.rsplit("-", 1)[1] for p in cache.glob(checkpoints)) if n.isdigit()]
    metrics = list(cache.glob(f"{stage}-*.partial/metrics.jsonl"))
    if not saved or not metrics:
        return False
    try:
        return any(row["step"] > max(saved) for row in _rows(metrics[0]))
    except json.JSONDecodeError:  # a row being written
        return False


@pytest.mark.parametrize("stage", sorted(KILLED))
def test_killed_node_resumes_from_its_last_checkpoint(stage, data_home, model_cache, tmp_path):
    overrides, checkpoints = KILLED[stage]
    cache = tmp_path / "cache"
    args = [ALIGNLAB, *TINY_SFT, *overrides, f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run1'}"]
    env = alignlab_env(data_home, model_cache)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not _logged_past_checkpoint(cache, stage, checkpoints):
        assert proc.poll() is None, "alignlab exited before the node logged past its first checkpoint"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(cache.glob(f"{stage}-*/{COMPLETE}")), "a killed node must not be published"

    args[-1] = f"hydra.run.dir={tmp_path / 'run2'}"
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    nodes = json.loads((tmp_path / "run2" / "summary.json").read_text())["nodes"]
    if stage != "sft":
        assert nodes["sft"]["status"] == "cached"  # finished before the kill: not trained again
    node = nodes[stage]
    assert node["status"] == "trained"
    if stage == "ppo":
        assert node["metrics"]["resumed_from_iteration"] >= 2 and node["metrics"]["iterations"] == 16
    else:
        assert node["metrics"]["resumed_from_step"] >= 3 and node["metrics"]["train_steps"] == 24
    artifact = Path(node["artifact"])
    assert not (artifact / "checkpoints").exists() and (artifact / COMPLETE).is_file()
    # The steps logged after the checkpoint by the killed attempt are logged once, by the rerun.
    rows = _rows(artifact / "metrics.jsonl")
    if stage == "ppo":
        assert [row["step"] for row in rows] == list(range(1, 17))
        iterations = [row["iteration"] for row in _rows(artifact / "samples.jsonl")]
        assert iterations == sorted(iterations) and len(iterations) == 16 * 2  # 2 responses per iteration
    else:
        assert [row["step"] for row in rows if "loss" in row] == list(range(1, 25))  # the training-loss rows
    weights = load_file(str(artifact / "adapter" / "adapter_model.safetensors"))
    assert weights and all(torch.isfinite(w).all() for w in weights.values())


def _finite(path: Path) -> bool:
    return all(torch.isfinite(w).all() for w in load_file(str(path)).values())


def test_diverging_sft_stops_naming_node_and_step(data_home, model_cache, tmp_path):
    """An absurd learning rate: exit 1 with one error line, finite checkpoints kept, nothing published."""
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    args = [ALIGNLAB, *TINY_SFT, "stage.sft.learning_rate=1e30", "stage.sft.max_steps=12", "stage.sft.save_steps=1",
            f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(args, env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("alignlab: error:")]
    assert len(errors) == 1 and "node sft: a trainable weight became NaN/inf at step" in errors[0], done.stderr[-3000:]
    assert "stage.sft.learning_rate" in errors[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["nodes"]["sft"]["status"] == "failed"
    assert not list(cache.glob(f"sft-*/{COMPLETE}")) and not [p for p in cache.glob("sft-*") if p.suffix == ""]
    kept = sorted(cache.glob("sft-*.partial/checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    failed_step = int(errors[0].split("at step ")[1].split(";")[0])
    assert kept and int(kept[-1].name.split("-")[1]) == failed_step - 1
    assert all(_finite(c / "adapter_model.safetensors") for c in kept)


def test_diverging_ppo_stops_before_the_update(compose, tmp_path):
    cfg = compose(*TINY_SFT, "pipeline=sft_ppo", "stage.sft.max_steps=2", *PPO, "stage.ppo.iterations=6",
                  "stage.ppo.save_steps=1", "stage.ppo.learning_rate=1e30", "stage.ppo.max_grad_norm=1e30")
    with pytest.raises(TrainingDivergedError, match=r"node ppo: .* at iteration \d+; lower stage.ppo.learning_rate"):
        run(cfg)
    cache = Path(cfg.paths.cache_dir)
    assert not list(cache.glob(f"ppo-*/{COMPLETE}"))
    kept = list(cache.glob("ppo-*.partial/checkpoints/iter-*[0-9]"))
    assert kept and all(_finite(c / "policy.safetensors") and _finite(c / "value.safetensors") for c in kept)
