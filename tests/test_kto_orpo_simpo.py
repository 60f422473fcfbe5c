"""KTO, ORPO and SimPO stages on the tiny model: KTO continues an SFT node against its frozen copy,
ORPO and SimPO train without a reference (ORPO from the base, SimPO from SFT)."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.models import load_adapter, load_base
from alignlab.preflight import preflight
from alignlab.stages import kto, pairs, reference_free, sft, trl_recipe
from alignlab.stages.context import Artifact
from conftest import TINY_PREFERENCE, TINY_SFT, _stage_overrides

TINY = (*TINY_SFT, *TINY_PREFERENCE, *_stage_overrides("kto", steps=3), *_stage_overrides("orpo", steps=3),
        *_stage_overrides("simpo", steps=3))
IDS = torch.tensor([[1, 504, 3101, 2, 15, 88, 7]])


@pytest.fixture
def sft_artifact(compose, stage_context):
    ctx = stage_context(compose(*TINY, "pipeline=sft_kto"), "sft")
    return Artifact("sft", "sft", "k", ctx.work_dir, sft.run(ctx))


def test_kto_rows_from_pairs_alternate_desirable_and_undesirable_of_different_prompts():
    def pair(prompt: str, good: str, bad: str) -> dict:
        return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}]}

    two = [pair("A?", "a+", "a-"), pair("B?", "b+", "b-")]
    rows = kto.unpaired(two, seed=0)  # random.Random(0).shuffle([0, 1]) keeps the order
    reply = [(r["prompt"][0]["content"], r["completion"][0]["content"], r["label"]) for r in rows]
    assert reply == [("A?", "a+", True), ("B?", "b-", False), ("A?", "a-", False), ("B?", "b+", True)]
    assert [r["completion"][0]["content"] for r in kto.unpaired(two, seed=1)] == ["b+", "a-", "b-", "a+"]


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _check_trained_and_reloads(ctx, trainer, before, cfg):
    """Every trainable LoRA weight of the policy moved, every base weight stayed, and the saved adapter
    reloads onto a fresh base to the same logits."""
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    after = dict(model.named_parameters())
    policy = [n for n in before if ".lora_" in n and ".default." in n]
    assert policy and all(not torch.equal(before[n], after[n]) for n in policy)
    base = [n for n in before if ".lora_" not in n]
    assert base and all(torch.equal(before[n], after[n]) for n in base)
    expected = _logits(model)
    reloaded = load_adapter(load_base(cfg.model, cfg.quant, ctx.model_cache), ctx.work_dir / "adapter", trainable=False)
    torch.testing.assert_close(_logits(reloaded), expected, rtol=0, atol=1e-5)


def test_kto_continues_sft_adapter_against_its_frozen_copy(compose, stage_context, sft_artifact):
    cfg = compose(*TINY, "pipeline=sft_kto")
    ctx = stage_context(cfg, "kto", upstream={"policy": sft_artifact})
    trainer = kto.build_trainer(ctx)
    model = trainer.model
    assert trainer.ref_model is None and set(model.peft_config) == {"default", "ref"}
    labels = trainer.train_dataset["label"]
    kept = len(pairs.with_room_for_replies(ctx, trainer.processing_class, ctx.data.train))
    assert 0 < kept < len(ctx.data.train)  # max_length 128: some prompts leave no room for a reply
    assert labels == [i % 2 == 0 for i in range(kept)] + [i % 2 == 1 for i in range(kept)]
    before = _snapshot(model)
    for name, value in before.items():  # step 0: the reference is the upstream SFT policy, weight for weight
        if ".ref." in name:
            assert torch.equal(value, before[name.replace(".ref.", ".default.")]), name
    metrics = trl_recipe.fit(ctx, trainer, drop_adapters=("ref",))
    assert metrics["train_steps"] == 3
    for key in ("eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins", "eval_kl"):
        assert math.isfinite(metrics[key]), key
    assert set(model.peft_config) == {"default"}  # the saved artifact holds the policy only
    _check_trained_and_reloads(ctx, trainer, before, cfg)


@pytest.mark.parametrize("kind", ["orpo", "simpo"])
def test_reference_free_stage_trains_without_a_reference(kind, compose, stage_context, sft_artifact):
    """ORPO starts from the base (fresh adapter), SimPO continues the SFT adapter; both read no reference."""
    cfg = compose(*TINY, "pipeline=orpo" if kind == "orpo" else "pipeline=sft_simpo")
    upstream = {} if kind == "orpo" else {"policy": sft_artifact}
    ctx = stage_context(cfg, kind, upstream=upstream)
    trainer = reference_free.build_trainer(ctx)
    assert set(trainer.model.peft_config) == {"default"} and not hasattr(trainer, "ref_model")
    # pairs whose prompt fills max_length (128 here) are left out: their empty replies would average to NaN
    assert len(trainer.train_dataset) == len(pairs.with_room_for_replies(ctx, trainer.processing_class, ctx.data.train))
    before = _snapshot(trainer.model)
    metrics = trl_recipe.fit(ctx, trainer)  # what reference_free.run does after building the trainer
    assert metrics["train_steps"] == 3
    for key in ("eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen"):
        assert math.isfinite(metrics[key]), key
    _check_trained_and_reloads(ctx, trainer, before, cfg)


def test_simpo_and_orpo_losses_match_the_papers_formulas(compose, stage_context):
    """The stage settings reach trl as the papers define them: SimPO's gamma is the margin itself
    (Meng et al. 2024, Eq. 6), ORPO's beta weighs -log sigmoid(log odds ratio) (Hong et al. 2024, Eq. 6-7)."""
    chosen, rejected = torch.tensor([-0.4, -1.2]), torch.tensor([-0.9, -0.7])  # length-normalised log-probs
    cfg = compose(*TINY, "pipeline=sft_simpo", "stage.simpo.beta=2.5", "stage.simpo.simpo_gamma=1.4")
    simpo = reference_free.build_trainer(stage_context(cfg, "simpo"))
    losses, _, _ = simpo.cpo_loss(chosen, rejected)
    # by hand: -log sigmoid(2.5 x (-0.4 + 0.9) - 1.4) = -log sigmoid(-0.15) = 0.770957; row 2: 2.5 x -0.5 - 1.4 = -2.65
    torch.testing.assert_close(losses, torch.tensor([0.770957, 2.718267]), atol=1e-5, rtol=0)
    orpo = reference_free.build_trainer(stage_context(compose(*TINY, "pipeline=orpo", "stage.orpo.beta=0.25"), "orpo"))
    terms = orpo.odds_ratio_loss(chosen, rejected)[0]
    # log odds(p) = log p - log(1 - p); row 1: (-0.4 - log(1 - e^-0.4)) - (-0.9 - log(1 - e^-0.9)) = 1.087797
    by_hand = [0.25 * -math.log1p(math.exp(-x)) for x in (1.087797, -0.827959)]
    torch.testing.assert_close(terms, torch.tensor(by_hand), atol=1e-5, rtol=0)


def test_bad_settings_fail_in_preflight_naming_the_key(compose, caplog):
    with pytest.raises(ConfigError, match=r"stage.kto.per_device_train_batch_size: 1; KTO estimates its KL"):
        preflight(compose(*TINY, "pipeline=sft_kto", "stage.kto.per_device_train_batch_size=1"))
    with pytest.raises(ConfigError, match=r"stage.simpo.simpo_gamma: -0.5 is out of range; it must be >= 0"):
        preflight(compose(*TINY, "pipeline=sft_simpo", "stage.simpo.simpo_gamma=-0.5"))
    with pytest.raises(ConfigError, match=r"stage.orpo.beta: 0.0 is out of range; it must be > 0"):
        preflight(compose(*TINY, "pipeline=orpo", "stage.orpo.beta=0"))
    with pytest.raises(ConfigError, match=r"stage.kto.loss_type: 'sigmoid' is not one of kto, apo_zero_unpaired"):
        preflight(compose(*TINY, "pipeline=sft_kto", "stage.kto.loss_type=sigmoid"))
    with caplog.at_level(logging.WARNING, logger="alignlab.preflight"):
        preflight(compose(*TINY, "pipeline=sft_kto", "stage.kto.desirable_weight=2.0"))
    assert "stage.kto.desirable_weight / stage.kto.undesirable_weight = 2 is outside [1, 4/3]" in caplog.text
