"""PPO stage on the tiny model: policy and value train, the reference does not move; reward sources."""
from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignlab.errors import ConfigError, TrainingCollapsedError
from conftest import TINY_PREFERENCE, TINY_SFT

TINY_PPO = (
    *TINY_SFT, *TINY_PREFERENCE, "stage.sft.max_steps=2", "stage.reward.max_steps=2",
    "data.prompts.max_train_rows=24",
    "stage.ppo.iterations=2", "stage.ppo.rollout_batch_size=4", "stage.ppo.mini_batch_size=2",
    "stage.ppo.ppo_epochs=2", "stage.ppo.max_new_tokens=8", "stage.ppo.learning_rate=1e-2",
    "stage.ppo.save_steps=1",
)


def _lora(path: Path) -> dict:
    return {k: v for k, v in load_file(str(path)).items() if ".lora_" in k}


def test_ppo_trains_policy_and_value_and_keeps_the_reference(compose, tmp_path):
    from alignlab.pipeline import run
    from alignlab.rl.shared_model import SharedBaseModel
    from alignlab.rl.trainer import PPOTrainer, gather_logprobs

    cfg = compose(*TINY_PPO, "pipeline=sft_rm_ppo", "stage.ppo.collapse_patience=1", f"paths.run_dir={tmp_path / 'run'}")
    nodes = run(cfg).nodes
    sft, rm, ppo = (Path(nodes[n].artifact) for n in ("sft", "rm", "ppo"))
    metrics = nodes["ppo"].metrics
    assert metrics["iterations"] == 2 and metrics["episodes"] == 8

    # Every policy LoRA tensor moved away from the SFT adapter it started from.
    start, end = _lora(sft / "adapter" / "adapter_model.safetensors"), _lora(ppo / "adapter" / "adapter_model.safetensors")
    assert set(start) == set(end) and all(not torch.equal(start[k], end[k]) for k in start)
    # Every value LoRA tensor and the value head moved away from the reward model they started from.
    rm_weights = load_file(str(rm / "adapter" / "adapter_model.safetensors"))
    value = load_file(str(ppo / "value" / "value.safetensors"))
    moved = [k for k in value if ".lora_" in k and not torch.equal(value[k], rm_weights[k])]
    assert len(moved) == len(_lora(rm / "adapter" / "adapter_model.safetensors")) > 0
    assert not torch.equal(value["value_head.weight"], rm_weights["base_model.model.score.weight"].float())

    records = [json.loads(l) for l in (ppo / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in ("reward/mean", "reward/with_kl_mean", "kl", "entropy", "clipfrac", "approx_kl", "loss/value",
                "loss/policy", "explained_variance", "response_length"):
        assert key in records[0], key
    assert len((ppo / "samples.jsonl").read_text().splitlines()) == 2 * 4

    # In-process: the reference log-probs stay fixed while the policy's change.
    shared = SharedBaseModel(cfg, sft / "adapter", rm / "adapter")
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(8)]
    trainer = PPOTrainer(shared, cfg.stage.ppo, prompts, "no")
    probe = trainer.rollout(0)

    def logprobs(reference: bool) -> torch.Tensor:
        with torch.no_grad():
            ctx = shared.reference() if reference else nullcontext()
            with ctx:
                logits = shared.response_logits(probe.input_ids, probe.attention_mask, probe.context, 0.7)
            return gather_logprobs(logits, probe.input_ids[:, probe.context:])

    # Responses cut off without EOS are scored with the assistant turn left open, not closed.
    batch, finished = trainer._prompt_batch(0), [sample["eos"] for sample in probe.samples]
    responses, scored = [sample["response"] for sample in probe.samples], [sample["score"] for sample in probe.samples]
    assert not all(finished)  # max_new_tokens=8: the tiny policy is cut off
    h = cfg.stage.ppo
    torch.testing.assert_close(torch.tensor(scored), shared.scores(batch, responses, finished, h.reward_max_length, 4))
    closed = shared.scores(batch, responses, [True] * len(batch), h.reward_max_length, 4)
    assert all(abs(s - c) > 1e-6 for s, c, done in zip(scored, closed.tolist(), finished) if not done)

    ref_before, policy_before = logprobs(True), logprobs(False)
    trainer.train(tmp_path / "ckpt", tmp_path / "samples.jsonl")
    assert torch.equal(logprobs(True), ref_before)
    assert not torch.allclose(logprobs(False), policy_before)


def test_ppo_with_programmatic_reward_resumes_from_checkpoint(compose, tmp_path):
    from alignlab.rl import rewards
    from alignlab.rl.shared_model import SharedBaseModel
    from alignlab.rl.trainer import PPOTrainer

    cfg = compose(*TINY_PPO, "pipeline=sft_ppo", "stage.ppo.collapse_patience=1")  # a normal run never trips it
    shared = SharedBaseModel(cfg, None, None, reference="base", value_init="fresh")
    prompts = [[{"role": "user", "content": f"Tell me about {w}."}] for w in ("cats", "rain", "tea", "maps", "jazz")]
    fn = rewards.resolve({"_target_": "alignlab.rl.rewards.target_length", "words": 3})
    trainer = PPOTrainer(shared, cfg.stage.ppo, prompts, "no", reward_fn=fn)
    trainer.train(tmp_path / "ckpt", tmp_path / "samples.jsonl")
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["iter-1"]  # the last one before the end

    cfg.stage.ppo.iterations = 3
    again = PPOTrainer(SharedBaseModel(cfg, None, None, reference="base", value_init="fresh"), cfg.stage.ppo,
                       prompts, "no", reward_fn=fn)
    again._resume(tmp_path / "ckpt")
    assert again.iteration == 1 and len(again.history) == 1
    assert again.history[0] == trainer.history[0]
    again.train(tmp_path / "ckpt", tmp_path / "samples.jsonl")
    assert again.iteration == 3 and len(again.history) == 3


def test_truncated_response_is_rendered_with_its_turn_open(compose):
    from alignlab.models import load_tokenizer
    from alignlab.rl.shared_model import chat_texts

    cfg = compose(*TINY_PPO, "pipeline=sft_ppo")
    tok = load_tokenizer(cfg.model, cfg.paths.model_cache)
    prompt = [{"role": "user", "content": "Name a colour."}]
    opened = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    done, cut = chat_texts(tok, [prompt, prompt], ["Blue is", "Blue is"], [True, False])
    assert done == opened + "Blue is<|im_end|>\n" and cut == opened + "Blue is"


LENGTH = {"_target_": "alignlab.rl.rewards.target_length", "words": 3}
PROMPTS = [[{"role": "user", "content": f"Tell me about {w}."}] for w in ("cats", "rain", "tea", "maps")]


@pytest.mark.parametrize("model", ["tiny", "smollm2"])
def test_rollout_logprobs_are_those_the_responses_were_sampled_with(compose, model):
    """Even with a checkpoint generation_config that transformers would merge into generate()
    (penalties, n-gram bans, top-k), the rollout samples from softmax(logits / temperature): the
    training-side log-probs equal generate's own transition scores of the same sampling call."""
    from alignlab.rl import rewards
    from alignlab.rl.shared_model import SharedBaseModel
    from alignlab.rl.trainer import PPOTrainer

    cfg = compose(*TINY_PPO, "pipeline=sft_ppo", f"model={model}")
    shared = SharedBaseModel(cfg, None, None, reference="base", value_init="fresh")
    checkpoint = shared.model.get_base_model().generation_config
    checkpoint.repetition_penalty, checkpoint.no_repeat_ngram_size, checkpoint.top_k = 1.5, 2, 5
    trainer = PPOTrainer(shared, cfg.stage.ppo, PROMPTS, "no", reward_fn=rewards.resolve(LENGTH))
    rollout = trainer.rollout(0)
    _, out = trainer.sample(trainer._prompt_batch(0), 0, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences, rollout.input_ids)  # the same sampling call
    sampled = shared.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    mask = rollout.mask.bool()
    torch.testing.assert_close(rollout.logprobs[mask], sampled[mask], atol=1e-4, rtol=0)
    assert checkpoint.repetition_penalty == 1.5  # the checkpoint's own config is left as it was


def test_merged_generation_samples_like_the_unmerged_policy_and_restores_the_base(compose):
    """With the policy adapter merged into the fp32 base for sampling, a rollout draws the same tokens
    (fixed seed) with the same log-probs (1e-4) as the unmerged adapter, the base weights afterwards
    are bit for bit those before, and no policy/reference/value pass can run while merged."""
    from omegaconf import OmegaConf

    from alignlab.models.generation import merge_is_exact, merged_adapter
    from alignlab.rl import rewards
    from alignlab.rl.shared_model import POLICY, SharedBaseModel
    from alignlab.rl.trainer import PPOTrainer, gather_logprobs

    cfg = compose(*TINY_PPO, "pipeline=sft_ppo", "stage.ppo.max_new_tokens=16")
    shared = SharedBaseModel(cfg, None, None, reference="base", value_init="fresh")
    torch.manual_seed(0)
    with torch.no_grad():  # a fresh LoRA's B is 0: give the policy adapter a delta of its own
        for p in shared.adapter_params[POLICY]:
            p.normal_(std=0.2)
    base = {n: p.detach().clone() for n, p in shared.model.named_parameters() if ".lora_" not in n}
    assert merge_is_exact(shared.model)
    fn = rewards.resolve(LENGTH)
    runs = {}
    for merge in (True, False):
        h = OmegaConf.merge(cfg.stage.ppo, {"merge_for_generation": merge})
        trainer = PPOTrainer(shared, h, PROMPTS, "no", reward_fn=fn)
        _, out = trainer.sample(trainer._prompt_batch(0), 0, output_scores=True, return_dict_in_generate=True)
        runs[merge] = (trainer.rollout(0), out, shared.model.compute_transition_scores(out.sequences, out.scores,
                                                                                        normalize_logits=True))
    (merged, merged_out, merged_scores), (plain, plain_out, plain_scores) = runs[True], runs[False]
    assert torch.equal(merged.input_ids, plain.input_ids) and torch.equal(merged_out.sequences, plain_out.sequences)
    mask = plain.mask.bool()
    torch.testing.assert_close(merged_scores[mask], plain_scores[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(merged.logprobs, plain.logprobs, atol=1e-4, rtol=0)
    torch.testing.assert_close(merged.logprobs[mask], merged_scores[mask], atol=1e-4, rtol=0)
    with torch.no_grad():  # the adapter matters: the base alone gives other log-probs
        with shared.reference():
            logits = shared.response_logits(plain.input_ids, plain.attention_mask, plain.context, 0.7)
    assert (gather_logprobs(logits, plain.input_ids[:, plain.context:]) - plain.logprobs)[mask].abs().max() > 0.1
    with merged_adapter(shared.model) as merging:
        assert merging and all(layer.merged for layer in shared.lora_layers if POLICY in layer.lora_A)
        for merged_pass in (lambda: shared.values(plain.input_ids, plain.attention_mask, plain.context),
                            lambda: shared.response_logits(plain.input_ids, plain.attention_mask, plain.context, 0.7)):
            with pytest.raises(RuntimeError, match="merged into the shared base"):
                merged_pass()
    assert all(torch.equal(p, base[n]) for n, p in shared.model.named_parameters() if ".lora_" not in n)
    assert not any(layer.merged for layer in shared.lora_layers)

    half = SharedBaseModel(compose(*TINY_PPO, "pipeline=sft_ppo", "model.dtype=bfloat16"), None, None,
                           reference="base", value_init="fresh")
    assert not merge_is_exact(half.model)  # bf16 weights would round W + BA: generated unmerged


def test_attention_dropout_is_off_in_training_passes(compose, model_cache, tmp_path):
    """A checkpoint with config.attention_dropout > 0 (attention modules copy the rate, active in
    train mode): two training-mode forwards give identical log-probs."""
    from alignlab.models.embedded import embedded_model_dir
    from alignlab.rl.shared_model import SharedBaseModel
    from alignlab.rl.trainer import gather_logprobs

    path = tmp_path / "tiny-dropout"
    shutil.copytree(embedded_model_dir("embedded:tiny-llama", model_cache), path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    cfg = compose(*TINY_PPO, "pipeline=sft_ppo", f"model.name_or_path={path}")
    shared = SharedBaseModel(cfg, None, None, reference="base", value_init="fresh")
    ids = shared.tokenizer(["Tell me about cats. Cats are small."], return_tensors="pt")["input_ids"]
    shared.model.train()
    runs = [gather_logprobs(shared.response_logits(ids, torch.ones_like(ids), 4, 0.7), ids[:, 4:]) for _ in range(2)]
    assert torch.equal(*runs)


def test_ppo_without_learning_signal_stops_as_collapsed(compose, tmp_path):
    """A zero reward with no KL penalty and a fresh (zero) value head gives exactly zero
    gradients: after `collapse_patience` iterations the node stops with the collapse error."""
    from alignlab.rl.shared_model import SharedBaseModel
    from alignlab.rl.trainer import PPOTrainer

    cfg = compose(*TINY_PPO, "pipeline=sft_ppo", "stage.ppo.iterations=4", "stage.ppo.collapse_patience=2",
                  "stage.ppo.kl_coef=0", "stage.ppo.missing_eos_penalty=null")
    shared = SharedBaseModel(cfg, None, None, reference="base", value_init="fresh")
    trainer = PPOTrainer(shared, cfg.stage.ppo, PROMPTS, "no", reward_fn=lambda prompts, responses: [0.0] * len(responses))
    with pytest.raises(TrainingCollapsedError, match=r"node ppo: training collapsed at step 2: the gradient norm has "
                                                     r"been exactly 0 at learning rate 0\.01 for 2 logging steps"):
        trainer.train(tmp_path / "ckpt", tmp_path / "samples.jsonl")
    assert [stats["grad_norm"] for stats in trainer.history] == [0.0, 0.0]


def test_gradient_checkpointing_gives_the_same_gradients(compose):
    """Checkpointed layers recompute in the backward pass with the adapter that ran the forward
    (policy, then value), so policy and value gradients match the plain run."""
    from alignlab.rl import rewards
    from alignlab.rl.shared_model import SharedBaseModel
    from alignlab.rl.trainer import PPOTrainer

    cfg = compose(*TINY_PPO, "pipeline=sft_ppo")
    prompts = [[{"role": "user", "content": f"Tell me about {w}."}] for w in ("cats", "rain", "tea", "maps")]
    fn = rewards.resolve({"_target_": "alignlab.rl.rewards.target_length", "words": 3})
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        shared = SharedBaseModel(cfg, None, None, reference="base", value_init="fresh",
                                 gradient_checkpointing=checkpointing)
        with torch.no_grad():
            shared.value_head.weight.normal_()  # a zero head would leave the value LoRA without gradient
        assert shared.model.get_base_model().is_activation_checkpointing == checkpointing
        trainer = PPOTrainer(shared, cfg.stage.ppo, prompts, "no", reward_fn=fn)
        trainer._micro_step(trainer.rollout(0), [0, 1, 2, 3], 1.0)
        grads.append([p.grad.clone() for p in trainer.params])
        assert not shared.model.training  # back in eval mode for generation
    assert len(grads[0]) == len(grads[1]) and sum(int(g.abs().sum() > 0) for g in grads[0]) > len(grads[0]) // 3
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-6)


def test_target_length_reward_and_bad_reward_specs():
    from alignlab.rl import rewards

    assert rewards.target_length([[]] * 3, ["a b", "a b c d", ""], words=2) == [1.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="needs a '_target_'"):
        rewards.resolve({"words": 3})
    with pytest.raises(ConfigError, match="_target_ 'alignlab.rl.rewards.nope' cannot be imported"):
        rewards.resolve({"_target_": "alignlab.rl.rewards.nope"})


def test_ppo_needs_exactly_one_reward_source(compose, tmp_path):
    from alignlab.pipeline import run

    cfg = compose(*TINY_PPO, "pipeline=sft_ppo", f"paths.run_dir={tmp_path / 'run'}")
    with pytest.raises(ConfigError, match="pipeline.nodes.ppo: a ppo node needs exactly one reward source"):
        run(cfg)


def test_ppo_refuses_sharding_engines(compose, tmp_path, monkeypatch):
    """Under FSDP/DeepSpeed (accelerate/fsdp.yaml, zero*.yaml) the ppo node stops with an error
    naming the node and the config to use."""
    from alignlab.pipeline import run

    run(compose(*TINY_PPO, "pipeline=sft", f"paths.run_dir={tmp_path / 'sft'}"))  # cached for the next run
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    cfg = compose(*TINY_PPO, "pipeline=sft_ppo", "+stage.ppo.reward_fn._target_=alignlab.rl.rewards.target_length",
                  f"paths.run_dir={tmp_path / 'run'}")
    with pytest.raises(ConfigError, match=r"pipeline.nodes.ppo: the ppo stage runs under plain data parallelism "
                                          r"only .* launched with FSDP: use accelerate/ddp.yaml"):
        run(cfg)


@pytest.mark.parametrize("mode, truncated_score", [("subtract", 1.5), ("replace", -1.0)])
def test_missing_eos_mode_subtracts_or_replaces_the_score(compose, mode, truncated_score):
    """A constant reward 2.5: responses cut off without EOS score 2.5 - 1 (subtract) or exactly -1
    (replace, the N+ details); finished ones keep 2.5."""
    from alignlab.rl.shared_model import SharedBaseModel
    from alignlab.rl.trainer import PPOTrainer

    cfg = compose(*TINY_PPO, "pipeline=sft_ppo", f"stage.ppo.missing_eos_mode={mode}")
    shared = SharedBaseModel(cfg, None, None, reference="base", value_init="fresh")
    trainer = PPOTrainer(shared, cfg.stage.ppo, PROMPTS, "no", reward_fn=lambda prompts, responses: [2.5] * len(responses))
    rollout = trainer.rollout(0)
    finished = torch.tensor([sample["eos"] for sample in rollout.samples])
    assert not finished.all()  # max_new_tokens=8: the tiny policy is cut off
    assert rollout.scores[~finished].tolist() == [truncated_score] * int((~finished).sum())
    assert rollout.scores[finished].tolist() == [2.5] * int(finished.sum())


def test_ppo_optimizer_settings_and_lr_schedule_per_iteration(compose, tmp_path):
    """Policy and value in two AdamW groups at their own rates, with the configured betas and eps;
    both follow warmup x linear decay per iteration, and a resumed run continues the schedule."""
    from alignlab.rl import rewards
    from alignlab.rl.shared_model import SharedBaseModel
    from alignlab.rl.trainer import PPOTrainer

    cfg = compose(*TINY_PPO, "pipeline=sft_ppo", "stage.ppo.value_learning_rate=4e-3", "stage.ppo.iterations=3",
                  "stage.ppo.lr_scheduler_type=linear", "stage.ppo.warmup_iterations=2",
                  "stage.ppo.warmup_start_factor=0.2", "stage.ppo.adam_beta1=0.8", "stage.ppo.adam_beta2=0.95",
                  "stage.ppo.adam_epsilon=1e-6")
    fn = rewards.resolve(LENGTH)

    def trainer():
        return PPOTrainer(SharedBaseModel(cfg, None, None, reference="base", value_init="fresh"), cfg.stage.ppo,
                          PROMPTS, "no", reward_fn=fn)

    seen = []
    first = trainer()
    policy, value = first.optimizer.param_groups
    assert all(a is b for a, b in zip(policy["params"], first.m.trainable()["policy"], strict=True))
    assert value["params"][-1] is first.m.value_head.weight
    for group in (policy, value):
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6
    first.optimizer.register_step_post_hook(lambda opt, args, kwargs: seen.append(
        (first.iteration, opt.param_groups[0]["lr"], opt.param_groups[1]["lr"])))
    first.train(tmp_path / "ckpt", tmp_path / "samples.jsonl")
    # factor(i) = (1 - i/3) x (0.2 + 0.8 i/2 while i < 2): 0.2, 2/3 x 0.6, 1/3
    factors = [0.2, 0.4, 1 / 3]
    expected = [(i, 1e-2 * f, 4e-3 * f) for i, f in enumerate(factors) for _ in range(4)]  # 2 epochs x 2 minibatches
    assert [i for i, _, _ in seen] == [i for i, _, _ in expected]
    torch.testing.assert_close(torch.tensor([s[1:] for s in seen]), torch.tensor([e[1:] for e in expected]),
                               rtol=1e-12, atol=0)
    assert [s["learning_rate"] for s in first.history] == pytest.approx([1e-2 * f for f in factors], rel=1e-12)

    again = trainer()  # resumes from iter-2: the last iteration runs at the schedule's rate again
    again.train(tmp_path / "ckpt", tmp_path / "samples.jsonl")
    assert again.resumed_from == 2
    assert [s["learning_rate"] for s in again.history] == pytest.approx([1e-2 * f for f in factors], rel=1e-12)


def test_policy_ema_is_the_saved_adapter_and_resumes(compose, tmp_path):
    """policy_ema=d: the exported adapter is the EMA (from the starting weights) of the policy after
    every optimizer step, computed here by hand; the live policy is left as it was; the checkpoint
    holds the EMA so far and a resumed run continues it."""
    from alignlab.rl import rewards
    from alignlab.rl.shared_model import SharedBaseModel
    from alignlab.rl.trainer import PPOTrainer

    d = 0.6
    cfg = compose(*TINY_PPO, "pipeline=sft_ppo", f"stage.ppo.policy_ema={d}")
    shared = SharedBaseModel(cfg, None, None, reference="base", value_init="fresh")
    trainer = PPOTrainer(shared, cfg.stage.ppo, PROMPTS, "no", reward_fn=rewards.resolve(LENGTH))
    named = [(n.replace(".default", ""), p) for n, p in shared.model.named_parameters() if ".default." in n]
    assert all(a is b for (_, a), b in zip(named, trainer.policy_params, strict=True))
    iterates = [[p.detach().clone() for _, p in named]]
    trainer.optimizer.register_step_post_hook(lambda *a: iterates.append([p.detach().clone() for _, p in named]))
    trainer.train(tmp_path / "ckpt", tmp_path / "samples.jsonl")
    assert len(iterates) == 1 + 2 * 4  # start + 2 iterations x 2 epochs x 2 minibatches

    def ema(steps):
        average = iterates[0]
        for weights in iterates[1:steps + 1]:
            average = [d * a + (1 - d) * w for a, w in zip(average, weights)]
        return average

    trainer.export_policy(tmp_path / "adapter")
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert set(saved) == {n for n, _ in named}
    for (name, live), hand, last in zip(named, ema(8), iterates[-1]):
        torch.testing.assert_close(saved[name], hand, rtol=1e-5, atol=1e-7)
        assert torch.equal(live, last)  # the live policy is back
    assert any(not torch.allclose(saved[n], p) for n, p in named)

    checkpointed = torch.load(tmp_path / "ckpt" / "iter-1" / "ema.pt", weights_only=True)
    for saved_ema, hand in zip(checkpointed, ema(4)):
        torch.testing.assert_close(saved_ema, hand, rtol=1e-5, atol=1e-7)
    again = PPOTrainer(SharedBaseModel(cfg, None, None, reference="base", value_init="fresh"), cfg.stage.ppo,
                       PROMPTS, "no", reward_fn=rewards.resolve(LENGTH))
    again._resume(tmp_path / "ckpt")
    assert all(torch.equal(a, b) for a, b in zip(again.ema, checkpointed))


@pytest.mark.parametrize("side", ["keep_end", "keep_start", "drop"])
def test_long_rollout_prompts_are_cut_or_left_out(compose, side):
    """stage.ppo.on_long_prompt: the policy samples after the prompt's last max_prompt_length tokens
    (keep_end), its first tokens and the generation prompt (keep_start), or never sees it (drop)."""
    from alignlab.rl import rewards
    from alignlab.rl.shared_model import SharedBaseModel
    from alignlab.rl.trainer import PPOTrainer
    from alignlab.stages.prompts import chat_ids, generation_prompt_length

    cfg = compose(*TINY_PPO, "pipeline=sft_ppo", "stage.ppo.max_prompt_length=40", f"stage.ppo.on_long_prompt={side}")
    shared = SharedBaseModel(cfg, None, None, reference="base", value_init="fresh")
    long = [{"role": "user", "content": "Tell me about cats, rain, tea, maps and jazz, one by one, at length."}]
    trainer = PPOTrainer(shared, cfg.stage.ppo, [long] + PROMPTS, "no", reward_fn=rewards.resolve(LENGTH))
    full, opener = chat_ids(shared.tokenizer, long, generation_prompt=True), generation_prompt_length(shared.tokenizer)
    assert len(full) > 40 >= max(len(chat_ids(shared.tokenizer, p, generation_prompt=True)) for p in PROMPTS)
    if side == "drop":
        assert trainer.prompts == PROMPTS
        return
    assert trainer.prompts == [long] + PROMPTS
    enc, _ = trainer.sample([long], 0)
    kept = full[-40:] if side == "keep_end" else full[:40 - opener] + full[-opener:]
    assert enc["input_ids"][0].tolist() == kept
