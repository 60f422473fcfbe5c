"""GRPO and RLOO stages on the tiny model, continuing an SFT node; rewards from functions and a reward node."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignlab.stages import grpo, sft, trl_recipe
from alignlab.stages.context import Artifact
from conftest import TINY_PREFERENCE, TINY_SFT, alignlab_env

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
CORRECT = "alignlab.rl.rewards.gsm8k_correct"
LENGTH = "alignlab.rl.rewards.target_length"


def tiny_rl(kind: str, steps: int = 2) -> tuple:
    return (
        "data@data.prompts=gsm8k", "data.prompts.max_train_rows=16", "data.prompts.max_chars=400",
        f"stage.{kind}.max_steps={steps}", f"stage.{kind}.per_device_train_batch_size=8",
        f"stage.{kind}.num_generations=4", f"stage.{kind}.max_completion_length=12",
        f"stage.{kind}.learning_rate=5e-3", f"stage.{kind}.save_steps=1", f"stage.{kind}.sample_responses=2",
        f"+stage.{kind}.reward_fns.correct._target_={CORRECT}",
        f"+stage.{kind}.reward_fns.length._target_={LENGTH}", f"+stage.{kind}.reward_fns.length.words=4",
        f"+stage.{kind}.reward_weights.length=0.5",
    )


def rl_pipeline(kind: str) -> tuple:
    return (*TINY_SFT, "stage.sft.max_steps=2", "pipeline=sft_grpo", f"pipeline.nodes.grpo.stage={kind}", *tiny_rl(kind))


@pytest.fixture
def sft_artifact(compose, stage_context):
    ctx = stage_context(compose(*rl_pipeline("grpo")), "sft")
    return Artifact("sft", "sft", "k", ctx.work_dir, sft.run(ctx))


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_policy_continues_sft_adapter_reference_frozen_base_unchanged_reloads(compose, stage_context, sft_artifact,
                                                                              kind):
    from alignlab.stages.context import load_inference

    cfg = compose(*rl_pipeline(kind), f"stage.{kind}.beta=0.1")
    ctx = stage_context(cfg, "grpo", upstream={"policy": sft_artifact})
    trainer = grpo.build_trainer(ctx)
    model = trainer.model
    assert set(model.peft_config) == {"default", "ref"}
    params = dict(model.named_parameters())
    start = {k: v for k, v in load_file(str(sft_artifact.adapter_dir / "adapter_model.safetensors")).items()
             if ".lora_" in k}
    for key, value in start.items():  # policy and reference both start as the SFT adapter
        assert torch.equal(params[key.replace(".weight", ".default.weight")].detach(), value)
        assert torch.equal(params[key.replace(".weight", ".ref.weight")].detach(), value)
    trainable = {n: p.detach().clone() for n, p in params.items() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in params.items() if not p.requires_grad}

    metrics = trl_recipe.fit(ctx, trainer, drop_adapters=("ref",))
    assert metrics["train_steps"] == 2
    assert all(not torch.equal(v, params[n]) for n, v in trainable.items())
    assert all(torch.equal(v, params[n]) for n, v in frozen.items() if n in params)  # base and ref

    ids = torch.tensor([[1, 504, 3101, 2, 15]])
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False).eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    reloaded, _ = load_inference(cfg, Artifact("grpo", kind, "k", ctx.work_dir))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_beta_zero_keeps_no_reference(compose, stage_context, sft_artifact):
    ctx = stage_context(compose(*rl_pipeline("grpo"), "stage.grpo.beta=0"), "grpo", upstream={"policy": sft_artifact})
    assert set(grpo.build_trainer(ctx).model.peft_config) == {"default"}


def test_reward_history_gain_and_standard_error():
    logs = [{"reward": r, "step": i} for i, r in enumerate([0.1, 0.3, 0.2, 0.4, 0.5, 0.9])] + [{"train_loss": 1.0}]
    out = grpo.reward_history(logs)
    assert out["reward/first_mean"] == pytest.approx(0.2) and out["reward/last_mean"] == pytest.approx(0.7)
    assert out["reward/gain"] == pytest.approx(0.5)
    assert out["reward/gain_se"] == pytest.approx((0.02 / 2 + 0.08 / 2) ** 0.5)  # sample variances 0.02, 0.08


@pytest.mark.parametrize("reward", ["node", "verifiable"])
def test_sft_grpo_pipeline_runs_through_the_cli(data_home, model_cache, tmp_path, reward):
    """With a reward node; and with verifiable rewards, scored on held-out GSM8K test problems by
    generation, the grpo node's accuracy paired with its parent's."""
    pipeline = (("pipeline=sft_rm_grpo", *TINY_PREFERENCE, "stage.reward.max_steps=2") if reward == "node" else
                ("eval=gsm8k", "eval.limit=4", "eval.num_fewshot=0"))
    run_dir = tmp_path / "run"
    base = [arg for arg in rl_pipeline("grpo") if reward == "node" or arg != "eval=none"]
    cmd = [ALIGNLAB, *base, *pipeline, "stage.grpo.beta=0.04", f"paths.run_dir={run_dir}", f"paths.cache_dir={tmp_path / 'c'}",
           f"paths.data_home={data_home}", f"paths.model_cache={model_cache}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=alignlab_env(data_home, model_cache), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    node = json.loads((run_dir / "summary.json").read_text())["nodes"]["grpo"]
    assert node["status"] == "trained" and node["upstream"]["policy"] == "sft"
    metrics = node["metrics"]
    names = ["correct", "length"] + (["reward_model"] if reward == "node" else [])
    for key in ("final/reward_mean", "reward/gain", "final/kl", "final/entropy", "final/completions/mean_length",
                "final/completions/clipped_ratio", *(f"final/rewards/{n}/mean" for n in names)):
        assert key in metrics, key
    art = Path(node["artifact"])
    logged = [json.loads(line) for line in (art / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "reward" in r] == [1, 2]
    samples = [json.loads(line) for line in (art / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 2 and set(samples[0]) == {"step", "prompt", "completion", "reward", *names}
    weights = {"correct": 1.0, "length": 0.5, "reward_model": 1.0}
    assert samples[0]["reward"] == pytest.approx(sum(weights[n] * samples[0][n] for n in names))
    assert not (art / "adapter" / "ref").exists()
    if reward == "verifiable":
        forgetting = json.loads((run_dir / "summary.json").read_text())["forgetting"]
        (delta,) = forgetting["nodes"]["grpo"]["deltas"]
        assert delta["task"] == "alignlab_gsm8k" and forgetting["metrics"]["alignlab_gsm8k"]["metric"] == (
            "exact_match,flexible-extract")
        assert delta["vs_parent"]["n"] == 4 and delta["vs_parent"]["lo"] <= delta["vs_parent"]["delta"] <= (
            delta["vs_parent"]["hi"])


@pytest.mark.parametrize("override, message", [
    ("stage.grpo.per_device_train_batch_size=6",
     r"stage.grpo.per_device_train_batch_size=6 x gradient_accumulation_steps=1 x 1 process\(es\) = 6 completions "
     r"per generation batch, not a multiple of stage.grpo.num_generations=4"),
    ("+stage.grpo.reward_weights.nope=1", r"stage.grpo.reward_weights: \['nope'\] name no reward of this node"),
    ("+stage.grpo.reward_fns.bad._target_=alignlab.rl.rewards.nope",
     r"stage.grpo.reward_fns.bad._target_ 'alignlab.rl.rewards.nope' cannot be imported"),
    ("data@data.prompts=vicuna_prompts",
     r"stage.grpo.reward_fns.correct: alignlab.rl.rewards.gsm8k_correct needs the field\(s\) \['reference'\] of "
     r"every prompt row; data.prompts has none"),
    ("stage.grpo.epsilon_high=0.1", r"stage.grpo.epsilon_high=0.1 is below stage.grpo.epsilon=0.2"),
    ("stage.grpo.loss_type=drgrpo", r"stage.grpo.loss_type: 'drgrpo' is not one of .*\(did you mean 'dr_grpo'\?\)"),
    ("stage.grpo.num_generations=1", r"stage.grpo.num_generations: 1 is out of range; it must be >= 2"),
])
def test_bad_settings_fail_in_preflight_naming_the_key(compose, override, message):
    from alignlab.errors import ConfigError
    from alignlab.preflight import preflight

    with pytest.raises(ConfigError, match=message):
        preflight(compose(*rl_pipeline("grpo"), override))


def test_a_grpo_node_needs_a_reward(compose):
    from alignlab.errors import ConfigError
    from alignlab.preflight import preflight

    with pytest.raises(ConfigError, match=r"pipeline.nodes.grpo: a grpo node needs a reward"):
        preflight(compose(*TINY_SFT, "pipeline=sft_grpo"))
