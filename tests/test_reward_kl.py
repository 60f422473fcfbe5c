"""Reward-KL evaluation (alignlab/eval/reward_kl.py) on the tiny model: KL is exactly 0 against an
identical reference and clearly positive against a perturbed one, the reward is the reward node's
own score of the sampled responses, results repeat with the seed, and the pipeline records the
frontier in summary.json, the report and the grid summary."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from alignlab.errors import ConfigError
from conftest import TINY_PREFERENCE, TINY_SFT

FRONTIER = (
    *TINY_SFT, *TINY_PREFERENCE, "pipeline=sft_rm_ppo", "~pipeline.nodes.ppo", "stage.sft.max_steps=2",
    "stage.reward.max_steps=2", "data.preference.eval_fraction=0.1", "data.prompts.eval_fraction=0.1",
    "eval.reward_kl.enabled=true", "eval.reward_kl.reward=rm", "eval.reward_kl.prompts=6", "eval.reward_kl.n=2",
    "eval.reward_kl.max_new_tokens=8", "eval.reward_kl.batch_size=6", "eval.reward_kl.mixed_precision=no",
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_home, model_cache):
    """The sft and rm nodes of one pipeline run with the reward-KL evaluation on, and its record."""
    from hydra import compose, initialize_config_dir

    from alignlab.config import register_configs
    from alignlab.pipeline import run
    from conftest import CONF_DIR

    root = tmp_path_factory.mktemp("reward_kl")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"paths.data_home={data_home}", f"paths.model_cache={model_cache}", f"paths.cache_dir={root / 'cache'}",
            f"paths.run_dir={root / 'run'}", *FRONTIER])
    record = run(cfg)
    return cfg, record, root


def _adapter(record, node: str) -> Path:
    return Path(record.nodes[node].artifact) / "adapter"


def test_pipeline_records_the_frontier(trained):
    from alignlab.grid import summary_row
    from alignlab.record import SUMMARY, load
    from alignlab.report import FRONTIER_PLOT

    cfg, record, root = trained
    section = record.reward_kl
    assert list(section.nodes) == ["base", "sft"] and section.reward == "rm"
    base, sft = section.nodes["base"], section.nodes["sft"]
    assert base.kl == 0.0 and base.kl_ci == [0.0, 0.0]  # the base against itself
    assert sft.reference == "base" and sft.kl != 0.0  # a root node is measured from the base, which it moved from
    assert sft.prompts == 6 and sft.n == 12 and sft.reward_ci[0] <= sft.reward <= sft.reward_ci[1]
    assert load(root / "run" / SUMMARY).reward_kl == section  # round trip through summary.json
    assert (root / "run" / "plots" / FRONTIER_PLOT).is_file()
    assert "Reward-KL frontier" in (root / "run" / "report.md").read_text()
    row = summary_row(record)
    assert row["sft/reward_kl/kl"] == sft.kl and row["base/reward_kl/reward_hi"] == base.reward_ci[1]


def test_identical_reference_gives_zero_kl_and_the_seed_repeats_samples(trained):
    from alignlab.eval.reward_kl import held_out_prompts, sample_and_score

    cfg, record, _ = trained
    prompts = held_out_prompts(cfg, cfg.paths.data_home)
    sft, rm = _adapter(record, "sft"), _adapter(record, "rm")
    same = sample_and_score(cfg, prompts, sft, sft, rm)
    assert same["kl"] == [0.0] * 12
    again = sample_and_score(cfg, prompts, sft, sft, rm)
    assert again == same


def test_perturbed_adapter_has_positive_kl(trained, tmp_path):
    from alignlab.eval.reward_kl import held_out_prompts, sample_and_score, summarise

    cfg, record, _ = trained
    cfg = OmegaConf.merge(cfg, {"eval": {"reward_kl": {"n": 16}}})  # single-sample log-ratios are noisy: 16 a prompt
    sft, rm = _adapter(record, "sft"), _adapter(record, "rm")
    perturbed = tmp_path / "adapter"
    shutil.copytree(sft, perturbed)
    weights = load_file(str(perturbed / "adapter_model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v + 20.0 * torch.randn(v.shape, generator=gen) if ".lora_" in k else v for k, v in weights.items()}
    save_file(noisy, str(perturbed / "adapter_model.safetensors"))
    result = sample_and_score(cfg, held_out_prompts(cfg, cfg.paths.data_home), perturbed, sft, rm)
    point = summarise(result, "sft", "sft", "", 16, 0.95, 0)
    assert point.n == 6 * 16 and point.kl > 0 and point.kl_ci[0] > 0


def test_reward_is_the_reward_nodes_score_of_the_responses(trained):
    """The evaluation's reward of each base sample equals what the reward node, loaded on its own,
    scores for that prompt and response: no drift between sampling and scoring."""
    import json

    from alignlab.eval.reward_kl import held_out_prompts
    from alignlab.stages.reward import RewardScorer

    cfg, record, root = trained
    cached = [json.loads(p.read_text()) for p in (root / "cache" / "reward_kl").glob("*.json")]
    base = next(r for r in cached if r["kl"] == [0.0] * 12)  # the base against itself
    rows = [p for p in held_out_prompts(cfg, cfg.paths.data_home) for _ in range(2)]
    scorer = RewardScorer.from_artifact(record.nodes["rm"].artifact, cfg, max_length=cfg.eval.reward_kl.reward_max_length)
    torch.testing.assert_close(scorer.score(rows, base["response"], base["eos"]), torch.tensor(base["reward"]),
                               rtol=1e-4, atol=1e-4)
    assert record.reward_kl.nodes["base"].reward == pytest.approx(sum(base["reward"]) / 12)


@pytest.mark.parametrize("overrides, message", [
    (("eval.reward_kl.reward=rm_gold",), r"eval\.reward_kl\.reward: no node 'rm_gold' in the pipeline \(reward nodes: rm\)"),
    (("eval.reward_kl.reward=sft",), r"eval\.reward_kl\.reward: 'sft' is a sft node, not a reward node"),
    (("eval.reward_kl.reward=null",), r"eval\.reward_kl\.reward: name the reward node"),
    (("eval.reward_kl.prompts=5000",), r"eval\.reward_kl\.prompts: 5000 held-out prompts asked, data\.prompts holds out"),
    (("data.prompts.eval_fraction=0.9", "data.preference.max_train_rows=null"), r"eval\.reward_kl\.data: \d+ of its 6 held-out prompts are training prompts of node rm"),
    (("eval.reward_kl.reference=sft",), r"eval\.reward_kl\.reference: 'sft' is not one of upstream, base"),
])
def test_bad_settings_fail_before_anything_loads(compose, overrides, message):
    from alignlab.preflight import preflight

    with pytest.raises(ConfigError, match=message):
        preflight(compose(*FRONTIER, *overrides))


def test_typo_fails_at_compose_time(compose):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="rewards"):
        compose(*FRONTIER, "eval.reward_kl.rewards=rm")
