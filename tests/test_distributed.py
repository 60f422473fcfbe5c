"""`accelerate launch --config_file accelerate/cpu_ddp.yaml` (2 CPU processes, gloo): one pipeline
trains SFT, the reward model and DPO with DDP (trl trainers) and then PPO with gradients averaged
across processes; the main process alone publishes and reports.

accelerate 1.x spawns several processes only through its multi-process launcher (MULTI_GPU,
torchrun underneath; `--cpu` alone runs one process); on a machine without CUDA alignlab then
joins a gloo process group on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, TINY_PREFERENCE, TINY_SFT, alignlab_env

ACCELERATE = str(Path(sys.executable).parent / "accelerate")


def test_sft_rm_dpo_ppo_on_two_processes(data_home, model_cache, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        ACCELERATE, "launch", "--config_file", str(REPO / "accelerate" / "cpu_ddp.yaml"), "-m", "alignlab.cli",
        *TINY_SFT, *TINY_PREFERENCE, "pipeline=full", "stage.sft.max_steps=2", "stage.reward.max_steps=2",
        "stage.dpo.max_steps=2", "stage.dpo.per_device_train_batch_size=2",
        "data.prompts.max_train_rows=24", "stage.ppo.iterations=2", "stage.ppo.rollout_batch_size=2",
        "stage.ppo.mini_batch_size=2", "stage.ppo.ppo_epochs=1", "stage.ppo.max_new_tokens=6",
        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(cmd, env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    nodes = summary["nodes"]
    for name in ("sft", "rm", "dpo"):
        assert nodes[name]["status"] == "trained" and nodes[name]["metrics"]["train_steps"] == 2, name
    ppo = nodes["ppo"]
    # 2 iterations x 2 prompts x 2 processes
    assert ppo["status"] == "trained" and ppo["metrics"]["episodes"] == 8
    artifact = Path(ppo["artifact"])
    assert (artifact / "adapter" / "adapter_model.safetensors").is_file() and (artifact / "COMPLETE").is_file()
    steps = [json.loads(l)["step"] for l in (artifact / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # logged once, by the main process
    samples = (artifact / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 * 2  # the main process's own rollouts, sample_responses=4 per iteration cap


def test_repository_accelerate_configs_load():
    """accelerate/*.yaml parse with accelerate's own loader and ask for the engine they are named after."""
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"cpu_ddp": ("MULTI_GPU", None), "ddp": ("MULTI_GPU", None), "fsdp": ("FSDP", None),
                "zero2": ("DEEPSPEED", 2), "zero3": ("DEEPSPEED", 3)}
    files = sorted((REPO / "accelerate").glob("*.yaml"))
    assert [f.stem for f in files] == sorted(expected)
    for path in files:
        config = load_config_from_file(str(path))
        engine, stage = expected[path.stem]
        assert config.distributed_type == engine, path.name
        if stage is not None:
            assert config.deepspeed_config["zero_stage"] == stage
    assert load_config_from_file(str(REPO / "accelerate" / "cpu_ddp.yaml")).num_processes == 2


def test_evaluations_longer_than_the_process_group_timeout_complete(data_home, model_cache, tmp_path):
    """The main process evaluates the base and the sft node (lm-eval, well over 8 s) while the other
    waits; with an 8 s process-group timeout a collective barrier there would fail the run."""
    run_dir = tmp_path / "run"
    cmd = [
        ACCELERATE, "launch", "--config_file", str(REPO / "accelerate" / "cpu_ddp.yaml"), "-m", "alignlab.cli",
        *[o for o in TINY_SFT if not o.startswith("eval=")], "stage.sft.max_steps=2", "eval=forgetting_quick",
        "eval.limit=40", "process_group_timeout=8", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(cmd, env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["nodes"]["sft"]["status"] == "trained"
    assert summary["forgetting"]["nodes"]["sft"]["scores"]
    assert not list((tmp_path / "cache" / ".sync").iterdir())  # markers cleaned up after success


RANK_REWARD = '''import os


def nan_on_rank_1(prompts, responses):
    return [float("nan") if os.environ.get("RANK") == "1" else 1.0 for _ in responses]
'''


def test_divergence_on_one_process_stops_every_process(data_home, model_cache, tmp_path):
    """A NaN reward on the second process only: both processes stop with the divergence error (the
    first would otherwise wait in the gradient all-reduce, or be killed by the launcher)."""
    (tmp_path / "rank_reward.py").write_text(RANK_REWARD)
    env = alignlab_env(data_home, model_cache)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    cmd = [
        ACCELERATE, "launch", "--config_file", str(REPO / "accelerate" / "cpu_ddp.yaml"), "-m", "alignlab.cli",
        *TINY_SFT, "pipeline=sft_ppo", "stage.sft.max_steps=2", "data.prompts.max_train_rows=24",
        "stage.ppo.iterations=2", "stage.ppo.rollout_batch_size=2", "stage.ppo.mini_batch_size=2",
        "stage.ppo.ppo_epochs=1", "stage.ppo.max_new_tokens=6", "+stage.ppo.reward_fn._target_=rank_reward.nan_on_rank_1",
        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}",
    ]
    start = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and time.time() - start < 300
    errors = [line[line.index("alignlab: error:"):] for line in done.stderr.splitlines() if "alignlab: error:" in line]
    assert sorted(errors) == [
        "alignlab: error: node ppo: another process diverged at iteration 1 (its error says how); the last "
        "checkpoint is kept, the node is not published",
        "alignlab: error: node ppo: policy loss is nan at iteration 1; lower stage.ppo.learning_rate (the last "
        "checkpoint is kept, the node is not published)",
    ], done.stderr[-4000:]
