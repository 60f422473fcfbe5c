"""`accelerate launch` with 2 CPU processes (gloo): the same pipeline trains SFT with DDP and then
PPO with gradients averaged across processes; the main process alone publishes and reports.

accelerate 1.x spawns several processes only through its multi-process launcher (`--multi_gpu`,
torchrun underneath; `--cpu` alone runs one process); on a machine without CUDA alignlab then
joins a gloo process group on the CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import TINY_SFT, alignlab_env

ACCELERATE = str(Path(sys.executable).parent / "accelerate")


def test_sft_then_ppo_on_two_processes(data_home, model_cache, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "alignlab.cli",
        *TINY_SFT, "pipeline=sft_ppo", "stage.sft.max_steps=2",
        "data.prompts.max_train_rows=24", "stage.ppo.iterations=2", "stage.ppo.rollout_batch_size=2",
        "stage.ppo.mini_batch_size=2", "stage.ppo.ppo_epochs=1", "stage.ppo.max_new_tokens=6",
        "+stage.ppo.reward_fn._target_=alignlab.rl.rewards.target_length", "+stage.ppo.reward_fn.words=4",
        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(cmd, env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    sft, ppo = summary["nodes"]["sft"], summary["nodes"]["ppo"]
    assert sft["status"] == "trained" and sft["metrics"]["train_steps"] == 2
    # 2 iterations x 2 prompts x 2 processes
    assert ppo["status"] == "trained" and ppo["metrics"]["episodes"] == 8
    artifact = Path(ppo["artifact"])
    assert (artifact / "adapter" / "adapter_model.safetensors").is_file() and (artifact / "COMPLETE").is_file()
    steps = [json.loads(l)["step"] for l in (artifact / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # logged once, by the main process
    samples = (artifact / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 * 2  # the main process's own rollouts, sample_responses=4 per iteration cap
