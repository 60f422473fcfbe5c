"""Paper and recipe configs in experiments/paper: each full config composes with hub models and
hub data and states the paper's hyperparameters; its CPU mini sibling keeps every method
hyperparameter and changes only scale (steps, batch, lengths), model and data; and every mini
runs end to end through the `alignlab` CLI (marked `experiments`: `make test-experiments`)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, alignlab_env

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
PAPERS = sorted(p.stem for p in (REPO / "experiments" / "paper").glob("*.yaml") if not p.stem.endswith("_mini"))
# What a mini variant may change: how much it trains, not how.
SCALE_KEYS = {"max_steps", "num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
              "gradient_accumulation_steps", "max_length", "save_steps", "logging_steps", "warmup_steps",
              "gradient_checkpointing", "iterations", "rollout_batch_size", "mini_batch_size", "max_new_tokens",
              "max_prompt_length", "reward_max_length"}
# Each paper's headline hyperparameters, as the papers state them.
PAPER_VALUES = {
    "instructgpt": {"pipeline.name": "sft_rm_ppo", "stage.ppo.kl_coef": 0.02, "stage.ppo.ppo_epochs": 1,
                    "stage.ppo.value_init": "reward", "stage.ppo.temperature": 1.0, "stage.sft.num_train_epochs": 16,
                    "stage.reward.learning_rate": 9e-6},
    "dpo_hh": {"pipeline.name": "sft_dpo", "stage.dpo.beta": 0.1, "stage.dpo.learning_rate": 1e-6,
               "stage.dpo.optim": "rmsprop", "stage.dpo.warmup_steps": 150},
    "zephyr": {"pipeline.name": "sft_dpo", "stage.dpo.beta": 0.01, "stage.dpo.learning_rate": 5e-7,
               "stage.sft.learning_rate": 2e-5, "model.chat_template": "zephyr"},
    "qlora_guanaco": {"pipeline.name": "sft", "quant.method": "bnb_4bit", "quant.quant_type": "nf4",
                      "quant.double_quant": True, "peft.r": 64, "peft.alpha": 16, "peft.dropout": 0.1,
                      "stage.sft.learning_rate": 2e-4, "stage.sft.optim": "paged_adamw_32bit",
                      "stage.sft.max_grad_norm": 0.3, "stage.sft.lr_scheduler_type": "constant_with_warmup"},
    "ppo_ndetails": {"pipeline.name": "sft_rm_ppo", "stage.ppo.kl_coef": 0.05, "stage.ppo.ppo_epochs": 4,
                     "stage.ppo.max_new_tokens": 53, "stage.ppo.temperature": 0.7, "stage.ppo.vf_coef": 0.1,
                     "stage.ppo.missing_eos_penalty": 1.0, "stage.ppo.learning_rate": 3e-6},
}


def test_every_paper_has_values_and_a_mini():
    assert PAPERS == sorted(PAPER_VALUES)
    for paper in PAPERS:
        assert (REPO / "experiments" / "paper" / f"{paper}_mini.yaml").is_file(), paper


@pytest.mark.parametrize("paper", PAPERS)
def test_paper_config_and_its_mini(compose, paper):
    full, mini = compose(f"experiment=paper/{paper}"), compose(f"experiment=paper/{paper}_mini")
    for key, value in PAPER_VALUES[paper].items():
        assert OmegaConf.select(full, key) == value, key
    # Full scale: hub model and hub datasets; mini: the embedded model and the local mirror.
    assert not full.model.name_or_path.startswith("embedded:") and full.model.chat_template
    assert mini.model.name_or_path.startswith("embedded:") and mini.model.chat_template is None
    kinds = {node.stage for node in full.pipeline.nodes.values()}
    used = {"sft": ["sft"], "reward": ["preference"], "dpo": ["preference"], "ppo": ["prompts"]}
    for kind in kinds:
        for data in used[kind]:
            assert full.data[data].source.startswith("hub:"), (paper, data)
            assert not mini.data[data].source.startswith("hub:"), (paper, data)
    # The mini trains the same way, only less.
    assert OmegaConf.to_container(mini.pipeline) == OmegaConf.to_container(full.pipeline)
    for kind in kinds:
        a, b = OmegaConf.to_container(full.stage[kind]), OmegaConf.to_container(mini.stage[kind])
        changed = {k for k in a if a[k] != b[k]} - SCALE_KEYS
        assert not changed, (paper, kind, changed)
    for group, may_change in (("peft", {"method"}), ("quant", {"compute_dtype"})):
        # full fine-tuning at scale may become LoRA on CPU; 4-bit compute follows the device
        a, b = OmegaConf.to_container(full[group]), OmegaConf.to_container(mini[group])
        assert {k for k in a if a[k] != b[k]} <= may_change, (paper, group)
    assert mini.quant.method == full.quant.method


@pytest.mark.experiments
@pytest.mark.parametrize("paper", PAPERS)
def test_mini_variant_runs(paper, data_home, model_cache, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [ALIGNLAB, f"experiment=paper/{paper}_mini", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    for name, node in summary["nodes"].items():
        assert node["status"] == "trained", name
        assert (Path(node["artifact"]) / "COMPLETE").is_file()
        metrics = node["metrics"]
        if node["stage"] == "ppo":
            assert metrics["iterations"] == 2 and metrics["episodes"] == 8
        else:
            assert metrics["train_steps"] == 3, name
