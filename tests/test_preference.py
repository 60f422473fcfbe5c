"""Reward-model and DPO stages on the tiny model, chained from an SFT node."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alignlab.stages import dpo, reward, sft
from alignlab.stages.context import Artifact
from conftest import TINY_PREFERENCE, TINY_SFT

PIPELINE = (*TINY_SFT, *TINY_PREFERENCE, "pipeline=sft_rm_dpo")


@pytest.fixture
def sft_artifact(compose, stage_context):
    ctx = stage_context(compose(*PIPELINE), "sft")
    metrics = sft.run(ctx)
    return Artifact("sft", "sft", "k", ctx.work_dir, metrics)


def _lora_weights(adapter_dir):
    return {k: v for k, v in load_file(str(adapter_dir / "adapter_model.safetensors")).items() if ".lora_" in k}


def test_reward_model_starts_from_sft_adapter_trains_and_reloads_identically(compose, stage_context, sft_artifact):
    cfg = compose(*PIPELINE)
    ctx = stage_context(cfg, "rm", upstream={"init": sft_artifact})
    trainer = reward.build_trainer(ctx)
    model = trainer.model
    params = dict(model.named_parameters())
    sft_weights = _lora_weights(sft_artifact.adapter_dir)
    for key, value in sft_weights.items():  # init: sft copies every LoRA weight
        name = key.replace(".weight", ".default.weight")
        assert torch.equal(params[name].detach(), value), name
    score_head = [n for n, p in params.items() if "score" in n and p.requires_grad]
    assert score_head, "score head must be trainable (modules_to_save)"
    before = {n: p.detach().clone() for n, p in params.items() if p.requires_grad}

    trainer.train()
    for name, old in before.items():
        assert not torch.equal(old, params[name]), f"{name} did not change"

    scorer = reward.RewardScorer(reward.plain_model(trainer), trainer.processing_class, max_length=128)
    rows = ctx.data.eval
    prompts = [r["prompt"] for r in rows]
    responses = [r["chosen"][-1]["content"] for r in rows]
    expected = scorer.score(prompts, responses)
    trainer.save_model(str(ctx.work_dir / "adapter"))
    reloaded = reward.RewardScorer.from_artifact(ctx.work_dir, cfg, max_length=128)
    torch.testing.assert_close(reloaded.score(prompts, responses), expected, rtol=0, atol=1e-6)


def test_reward_pairs_over_max_length_are_truncated_not_dropped(compose, stage_context):
    """on_too_long=truncate: every pair reaches trl (whose RewardTrainer drops longer pairs), the
    long ones cut from the left (the response end, where the score is read, kept), and counted."""
    ctx = stage_context(compose(*PIPELINE, "stage.reward.max_length=64"), "rm")
    trainer = reward.build_trainer(ctx)
    tok, rows = trainer.processing_class, ctx.data.train
    full = [[tok.apply_chat_template(r["prompt"] + r[side], tokenize=True, return_dict=True)["input_ids"]
             for side in ("chosen", "rejected")] for r in rows]
    over = sum(max(len(chosen), len(rejected)) > 64 for chosen, rejected in full)
    assert over > 0 and ctx.too_long["train"] == over
    assert len(trainer.train_dataset) == len(rows)
    for row, (chosen, rejected) in zip(trainer.train_dataset, full):
        assert row["chosen_ids"] == chosen[-64:] and row["rejected_ids"] == rejected[-64:]


def test_reward_run_reports_held_out_accuracy_and_margin_plot(compose, stage_context):
    ctx = stage_context(compose(*PIPELINE), "rm")
    metrics = reward.run(ctx)
    assert metrics["eval_pairs"] == len(ctx.data.eval) > 0
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_margin_mean" in metrics
    png = ctx.work_dir / reward.MARGIN_PLOT
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dpo_continues_sft_adapter_with_frozen_reference_on_one_base(compose, stage_context, sft_artifact, monkeypatch):
    from transformers import AutoModelForCausalLM

    loads = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args[0])
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    ctx = stage_context(compose(*PIPELINE), "dpo", upstream={"policy": sft_artifact})
    trainer = dpo.build_trainer(ctx)
    assert len(loads) == 1, f"base loaded {len(loads)} times"
    assert trainer.ref_model is None
    model = trainer.model
    assert set(model.peft_config) == {"default", "ref"}

    params = dict(model.named_parameters())
    sft_weights = _lora_weights(sft_artifact.adapter_dir)
    for key, value in sft_weights.items():
        assert torch.equal(params[key.replace(".weight", ".default.weight")].detach(), value)
    policy_before = {n: p.detach().clone() for n, p in params.items() if ".default." in n}
    ref_before = {n: p.detach().clone() for n, p in params.items() if ".ref." in n}
    ids = torch.tensor([[1, 504, 3101, 2, 15]])

    def ref_logits():
        model.set_adapter("ref")
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids).logits
        model.set_adapter("default")
        return out

    ref_out = ref_logits()
    trainer.train()
    trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # drop the autocast forward wrapper

    assert all(not torch.equal(v, params[n]) for n, v in policy_before.items())
    assert all(torch.equal(v, params[n]) for n, v in ref_before.items())
    torch.testing.assert_close(ref_logits(), ref_out, rtol=0, atol=0)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust", "sigmoid+precomputed_ref"])
def test_dpo_loss_types_train(compose, stage_context, loss_type):
    extra = {"robust": ["stage.dpo.label_smoothing=0.1"],
             "sigmoid+precomputed_ref": ["stage.dpo.precompute_ref_log_probs=true"]}.get(loss_type, [])
    loss_type = loss_type.split("+")[0]
    ctx = stage_context(compose(*PIPELINE, f"stage.dpo.loss_type=[{loss_type}]", "stage.dpo.max_steps=2", *extra), "dpo")
    metrics = dpo.run(ctx)
    assert metrics["train_steps"] == 2 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    for key in ("eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen", "eval_logps/rejected"):
        assert key in metrics, key
    assert not (ctx.work_dir / "adapter" / "ref").exists()


def test_reward_normalisation_makes_the_reference_set_score_zero(compose, stage_context):
    cfg = compose(*PIPELINE, "stage.reward.normalize_rows=8")
    ctx = stage_context(cfg, "rm")
    metrics = reward.run(ctx)
    assert metrics["reward_offset"] != 0.0
    reloaded = reward.RewardScorer.from_artifact(ctx.work_dir, cfg, max_length=128)
    assert reloaded.offset == metrics["reward_offset"]
    assert abs(reloaded.chosen_scores(ctx.data.train[:8]).double().mean().item()) < 1e-5
    # PPO reads the reward node through its own scorer: the same shift applies there.
    from alignlab.rl.shared_model import SharedBaseModel

    shared = SharedBaseModel(cfg, None, ctx.work_dir / "adapter", reference="base", value_init="fresh")
    rows = ctx.data.train[:8]
    ppo_scores = shared.scores([r["prompt"] for r in rows], [r["chosen"][-1]["content"] for r in rows], [True] * 8, 128, 8)
    assert abs(ppo_scores.double().mean().item()) < 1e-4


@pytest.mark.parametrize("side,when", [("keep_end", "always"), ("keep_start", "always"), ("keep_end", "over_max_length")])
def test_prompt_budget_cuts_prompts_and_leaves_responses_untouched(compose, stage_context, side, when):
    """max_prompt_length: a longer prompt keeps its last N tokens (keep_end) or its first tokens and
    the generation prompt (keep_start), in every pair or only in pairs over max_length (128 here), in
    DPO's and the reward model's rows alike; responses are whole."""
    from alignlab.models import load_tokenizer
    from alignlab.stages.prompts import chat_ids, generation_prompt_length

    n = 24
    budget = [f"stage.{kind}.{key}={value}" for kind in ("dpo", "reward")
              for key, value in (("max_prompt_length", n), ("on_long_prompt", side), ("cut_prompts", when))]
    cfg = compose(*PIPELINE, *budget)
    ctx = stage_context(cfg, "dpo")
    dpo_rows, rm_rows = dpo.build_trainer(ctx).train_dataset, reward.build_trainer(stage_context(cfg, "rm")).train_dataset
    tok = load_tokenizer(cfg.model, cfg.paths.model_cache)
    opener, cut, whole = generation_prompt_length(tok), 0, 0
    assert len(dpo_rows) == len(rm_rows) == len(ctx.data.train)
    for row, d, r in zip(ctx.data.train, dpo_rows, rm_rows):
        prompt = chat_ids(tok, row["prompt"], generation_prompt=True)
        responses = {key: chat_ids(tok, row["prompt"] + row[key])[len(prompt):] for key in ("chosen", "rejected")}
        over = len(prompt) > n and (when == "always" or len(prompt) + max(map(len, responses.values())) > 128)
        kept = prompt if not over else prompt[-n:] if side == "keep_end" else prompt[:n - opener] + prompt[-opener:]
        cut, whole = cut + over, whole + (len(prompt) > n and not over)
        assert d["prompt_ids"] == kept
        for key, response in responses.items():
            assert d[f"{key}_ids"] == response
            assert r[f"{key}_ids"] == (kept + response)[-128:]
    assert cut > 0 and (whole > 0) == (when == "over_max_length")


def test_prompt_kept_by_its_end_keeps_the_final_user_turn_and_the_generation_prompt(compose):
    from alignlab.errors import ConfigError
    from alignlab.models import load_tokenizer
    from alignlab.stages.prompts import PromptBudget, chat_ids, preference_ids

    cfg = compose(*PIPELINE)
    tok = load_tokenizer(cfg.model, cfg.paths.model_cache)
    question = "And what is the capital of France?"
    row = {"prompt": [{"role": "user", "content": "Tell me a long story. " * 40},
                      {"role": "assistant", "content": "Once upon a time. " * 40},
                      {"role": "user", "content": question}],
           "chosen": [{"role": "assistant", "content": "Paris."}], "rejected": [{"role": "assistant", "content": "Lyon."}]}
    ids = preference_ids(tok, row, PromptBudget(tok, 32, "keep_end", "stage.dpo"))
    assert len(ids["prompt_ids"]) == 32
    assert tok.decode(ids["prompt_ids"]).endswith(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    assert ids["prompt_ids"] == chat_ids(tok, row["prompt"], generation_prompt=True)[-32:]
    assert tok.decode(ids["chosen_ids"]) == "Paris.<|im_end|>\n"
    with pytest.raises(ConfigError, match=r"stage\.dpo\.max_prompt_length=3: the chat template's generation prompt"):
        PromptBudget(tok, 3, "keep_start", "stage.dpo")


def test_prompt_batch_loss_averages_each_prompts_comparisons():
    """Hand-computed: a prompt with K=3 ranked responses (rewards 2, 0.5, -1) has C(3,2) comparisons,
    -log sigmoid of margins 1.5, 3 and 1.5, averaged; a second prompt with one comparison (margin -1)
    weighs the same in the batch."""
    rewards = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.0])
    pairs, prompt = torch.tensor([[0, 1], [0, 2], [1, 2], [3, 4]]), torch.tensor([0, 0, 0, 1])
    first = (0.20141327 + 0.04858735 + 0.20141327) / 3  # log(1 + e^-1.5), log(1 + e^-3), log(1 + e^-1.5)
    torch.testing.assert_close(reward.prompt_batch_loss(rewards[:3], pairs[:3], prompt[:3]), torch.tensor(first))
    batch = reward.prompt_batch_loss(rewards, pairs, prompt)
    torch.testing.assert_close(batch, torch.tensor((first + 1.31326169) / 2))  # log(1 + e^1)


def test_reward_batches_whole_prompts_and_scores_each_response_once(compose, stage_context):
    """batch_by_prompt on OASST's ranked replies (ranked_pairs=all): a batch element is a prompt with
    all its comparisons, its distinct responses scored once; no prompt is split across batches; the
    loss is prompt_batch_loss of the responses' scores, each as scored alone."""
    cfg = compose(*PIPELINE, "data@data.preference=oasst_pairs", "data.preference.ranked_pairs=all",
                  "data.preference.max_chars=1500", "stage.reward.max_length=384", "stage.reward.batch_by_prompt=true")
    ctx = stage_context(cfg, "rm")
    trainer = reward.build_trainer(ctx)
    prompts = {json.dumps(r["prompt"], sort_keys=True) for r in ctx.data.train}
    assert len(trainer.train_dataset) == len(prompts) < len(ctx.data.train)
    elements = list(trainer.train_dataset)
    prompts_seen, comparisons, sequences = 0, 0, 0
    for batch in trainer.get_train_dataloader():  # shuffled, one element per prompt
        prompts_seen += int(batch["prompt"].max()) + 1
        comparisons += batch["pairs"].shape[0]
        sequences += batch["input_ids"].shape[0]
    assert prompts_seen == len(prompts) and comparisons == len(ctx.data.train)
    assert sequences == sum(len(e["response_ids"]) for e in elements) < 2 * comparisons
    model = trainer.model.eval()
    batch = trainer.data_collator(elements[:4])
    with torch.no_grad():
        alone = torch.stack([model(input_ids=torch.tensor([ids])).logits[0, 0] for e in elements[:4] for ids in e["response_ids"]])
        loss = trainer.compute_loss(model, dict(batch))
    torch.testing.assert_close(loss, reward.prompt_batch_loss(alone, batch["pairs"], batch["prompt"]), rtol=0, atol=1e-5)
    assert max(len(e["pairs"]) for e in trainer.train_dataset) >= 3  # a prompt with K >= 3 ranked replies
    for element in trainer.train_dataset:
        k = len(element["response_ids"])
        assert len(element["pairs"]) <= k * (k - 1) // 2
    trainer.train()
    assert trainer.state.global_step == 4
