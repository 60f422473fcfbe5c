"""Preflight through the real CLI: each mistake exits 1 in seconds with one `alignlab: error:`
naming the key or file, no traceback, no model loaded and the stage cache untouched; the dry
run prints the plan; a collapsed SFT node stops the pipeline and is not published."""
from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import TINY_SFT, alignlab_env

from alignlab.errors import TrainingCollapsedError
from alignlab.stages.context import CollapseWatch

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
GOOD = {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]}


def _file(tmp: Path, name: str, content: bytes) -> tuple:
    (tmp / name).write_bytes(content)
    return (f"data.sft.source={tmp / name}", "data.sft.format=messages")


LATIN1 = (json.dumps(GOOD) + "\n").encode() + '{"messages": [{"role": "user", "content": "café"}]}\n'.encode("latin-1")
OFFSET = LATIN1.index("é".encode("latin-1"))
LENGTH_REWARD = "+stage.ppo.reward_fn._target_=alignlab.rl.rewards.target_length"
EVAL, JUDGE = ("eval=forgetting_quick", "eval.limit=2"), ("judge=local", "judge.num_prompts=2")

# name -> (overrides after TINY_SFT (a callable gets the case's tmp dir), pattern the error must match)
CASES = {
    # choices
    "judge backend": ((*JUDGE, "judge.backend=lokal"), r"judge\.backend: 'lokal' is not one of local, openai \(did you mean 'local'\?\)"),
    "judge verdict mode": ((*JUDGE, "judge.local_verdict=logprob"), r"judge\.local_verdict: 'logprob' is not one of logprobs, generate"),
    "judge on_error": (("judge.openai.on_error=ignore",), r"judge\.openai\.on_error: 'ignore' is not one of fail, count"),
    "gate mode": ((*EVAL, "eval.gate=stop"), r"eval\.gate: 'stop' is not one of warn, fail"),
    "ppo reference": (("stage.ppo.reference=sft2",), r"stage\.ppo\.reference: 'sft2' is not one of sft, base"),
    "ppo value init": (("stage.ppo.value_init=zero",), r"stage\.ppo\.value_init: 'zero' is not one of reward, fresh"),
    "kl estimator": (("stage.ppo.kl_estimator=k2",), r"stage\.ppo\.kl_estimator: 'k2' is not one of k1, k3"),
    "logger backend": (("logger.backend=tensorboard",), r"logger\.backend: 'tensorboard' is not one of wandb, none"),
    "quant method": (("quant.method=bnb_3bit",), r"quant\.method: 'bnb_3bit' is not one of none, bnb_4bit, bnb_8bit"),
    "model dtype": (("model.dtype=fp32",), r"model\.dtype: 'fp32' is not one of auto, float32"),
    "scheduler": (("stage.sft.lr_scheduler_type=cosin",), r"stage\.sft\.lr_scheduler_type: 'cosin' is not one of linear, cosine.*did you mean 'cosine'"),
    "optimizer": (("stage.sft.optim=adamw_torchh",), r"stage\.sft\.optim: 'adamw_torchh' is not one of .*adamw_torch"),
    "dpo loss type": (("stage.dpo.loss_type=[sigmoid,ipoo]",), r"stage\.dpo\.loss_type: 'ipoo' is not one of sigmoid, .*did you mean 'ipo'"),
    "bad-row policy": (("data.sft.on_bad_row=skip",), r"data\.sft\.on_bad_row: 'skip' is not one of error, drop"),
    "precision": (("stage.reward.mixed_precision=fp8",), r"stage\.reward\.mixed_precision: 'fp8' is not one of auto, no, bf16, fp16"),
    # ranges
    "negative dpo beta": (("stage.dpo.beta=-0.1",), r"stage\.dpo\.beta: -0\.1 is out of range; it must be > 0"),
    "zero learning rate": (("stage.sft.learning_rate=0",), r"stage\.sft\.learning_rate: 0\.0 is out of range; it must be > 0"),
    "negative max_steps": (("stage.sft.max_steps=-5",), r"stage\.sft\.max_steps: -5 is out of range; it must be -1 \(unset\) or >= 1"),
    "zero batch size": (("stage.reward.per_device_train_batch_size=0",), r"stage\.reward\.per_device_train_batch_size: 0 .*>= 1"),
    "negative kl coef": (("stage.ppo.kl_coef=-0.01",), r"stage\.ppo\.kl_coef: -0\.01 is out of range; it must be >= 0"),
    "zero clip range": (("stage.ppo.clip_range=0",), r"stage\.ppo\.clip_range: 0\.0 is out of range; it must be > 0"),
    "zero temperature": (("stage.ppo.temperature=0",), r"stage\.ppo\.temperature: 0\.0 .*> 0"),
    "top_p above 1": (("stage.ppo.top_p=1.5",), r"stage\.ppo\.top_p: 1\.5 is out of range; it must be > 0 and <= 1"),
    "ppo eos mode": (("stage.ppo.missing_eos_mode=clip",),
                     r"stage\.ppo\.missing_eos_mode: 'clip' is not one of subtract, replace"),
    "ppo lr schedule": (("stage.ppo.lr_scheduler_type=cosine",),
                        r"stage\.ppo\.lr_scheduler_type: 'cosine' is not one of constant, linear"),
    "prompt truncation side": (("stage.dpo.on_long_prompt=keep_left",),
                               r"stage\.dpo\.on_long_prompt: 'keep_left' is not one of keep_end, keep_start"),
    "zero prompt budget": (("stage.reward.max_prompt_length=0",),
                           r"stage\.reward\.max_prompt_length: 0 is out of range; it must be >= 1"),
    "ppo adam beta2 of 1": (("stage.ppo.adam_beta2=1",), r"stage\.ppo\.adam_beta2: 1\.0 is out of range; it must be >= 0 and < 1"),
    "ppo ema of 1": (("stage.ppo.policy_ema=1",), r"stage\.ppo\.policy_ema: 1\.0 is out of range; it must be > 0 and < 1"),
    "ppo zero value lr": (("stage.ppo.value_learning_rate=0",), r"stage\.ppo\.value_learning_rate: 0\.0 is out of range"),
    "dropout 1": (("peft.dropout=1.0",), r"peft\.dropout: 1\.0 is out of range; it must be >= 0 and < 1"),
    "lora rank 0": (("peft.r=0",), r"peft\.r: 0 is out of range; it must be >= 1"),
    "eval fraction 1": (("data.sft.eval_fraction=1.0",), r"data\.sft\.eval_fraction: 1\.0 .*>= 0 and < 1"),
    "label smoothing": (("stage.dpo.label_smoothing=0.7",), r"stage\.dpo\.label_smoothing: 0\.7 .*< 0\.5"),
    "nan learning rate": (("stage.dpo.learning_rate=nan",), r"stage\.dpo\.learning_rate: nan is out of range"),
    # files
    "not UTF-8": (lambda t: _file(t, "latin1.jsonl", LATIN1),
                  rf"latin1\.jsonl: is not UTF-8 text \(byte 0xe9 at byte offset {OFFSET}\); the file must be UTF-8"),
    "binary file": (lambda t: _file(t, "weights.jsonl", b"PK\x03\x04\x00\x00binary"),
                    r"weights\.jsonl: is a binary file \(NUL byte at offset 4\)"),
    "not gzip": (lambda t: _file(t, "rows.jsonl.gz", b'{"messages": []}\n'), r"rows\.jsonl\.gz: cannot read it as a \.gz file"),
    "gzip of latin-1": (lambda t: _file(t, "rows2.jsonl.gz", gzip.compress(LATIN1)),
                        rf"rows2\.jsonl\.gz: is not UTF-8 text \(byte 0xe9 at byte offset {OFFSET}\)"),
    # tasks
    "bundled task typo": ((*EVAL, "eval.tasks=[alignlab_arc_esy]"),
                          r"eval\.tasks: unknown lm-eval task 'alignlab_arc_esy'; close: alignlab_arc_easy"),
    "lm-eval task typo": ((*EVAL, "eval.tasks=[hellaswagg]"), r"eval\.tasks: unknown lm-eval task 'hellaswagg'; close: .*hellaswag"),
    "mmlu subject": ((*EVAL, "eval.tasks=[alignlab_mmlu]", "eval.mmlu_subjects=[astronomyy]"),
                     r"eval\.mmlu_subjects: unknown subject\(s\) astronomyy"),
    "gated metric of another task": ((*EVAL, "+eval.metrics.alignlab_arc_eazy=acc"),
                                     r"eval\.metrics\.alignlab_arc_eazy: 'alignlab_arc_eazy' is not in eval\.tasks"),
    "confidence 1": ((*EVAL, "eval.confidence=1.0"), r"eval\.confidence: 1\.0 is out of range; it must be > 0 and < 1"),
    # judge
    "judge unknown node": ((*JUDGE, "judge.comparisons=[sft:dpo]"),
                           r"judge\.comparisons: 'sft:dpo': no generative node or base named 'dpo' \(have: base, sft\)"),
    "judge one side": ((*JUDGE, "judge.comparisons=[sft]"), r"judge\.comparisons: 'sft': write two different models as 'a:b'"),
    "judge url": (("judge=openai", "judge.num_prompts=2", "judge.openai.base_url=localhost:8000/v1"),
                  r"judge\.openai\.base_url: 'localhost:8000/v1' is not an http\(s\) URL with a host"),
    "judge template": ((*JUDGE, "judge.template=pair-v9"), r"judge\.template: no pairwise template 'pair-v9'"),
    "judge calibration size": ((*JUDGE, "judge.calibration.pairs=80"),
                               r"judge\.calibration\.pairs=80: .* has only 29 pairs per label within"),
    "judge calibration data": ((*JUDGE, "judge.calibration.human=nope"),
                               r"judge\.calibration\.human: no dataset 'nope' in the data group"),
    # model
    "model path": (("model.name_or_path=/no/such/model",), r"model\.name_or_path: model path '/no/such/model' does not exist"),
    "embedded name": (("model.name_or_path=embedded:tiny-lama",), r"model\.name_or_path: unknown embedded model 'embedded:tiny-lama'"),
    "not a hub id": (("model.name_or_path=a/b/c",), r"model\.name_or_path: model path 'a/b/c' does not exist \(and is not a hub id"),
    "chat template": (("model.chat_template=chatmlx",), r"model\.chat_template: 'chatmlx' is neither one of chatml, .* nor an existing \.jinja file"),
    "quantized full fine-tune": (("quant=qlora_nf4", "peft.method=none"), r"quant\.method=bnb_4bit with peft\.method=none"),
    # graph and cross-field
    "dpo loss weights": (("pipeline=sft_dpo", "stage.dpo.loss_weights=[1.0,2.0]"), r"stage\.dpo\.loss_weights: 2 weight\(s\) for 1 loss type"),
    "ppo without reward": (("pipeline=sft_ppo",), r"pipeline\.nodes\.ppo: a ppo node needs exactly one reward source"),
    "ppo top-k sampling": (("pipeline=sft_ppo", LENGTH_REWARD, "stage.ppo.top_k=50"),
                           r"stage\.ppo\.top_k=50: PPO samples from the full softmax .* set stage\.ppo\.top_k=0"),
    "ppo top-p sampling": (("pipeline=sft_ppo", LENGTH_REWARD, "stage.ppo.top_p=0.9"),
                           r"stage\.ppo\.top_p=0\.9: PPO samples from the full softmax .* set stage\.ppo\.top_p=1"),
    "ppo replace without penalty": (("pipeline=sft_ppo", LENGTH_REWARD, "stage.ppo.missing_eos_mode=replace",
                                     "stage.ppo.missing_eos_penalty=null"),
                                    r"stage\.ppo\.missing_eos_mode=replace: set stage\.ppo\.missing_eos_penalty"),
    "ppo in fp16": (("pipeline=sft_ppo", LENGTH_REWARD, "stage.ppo.mixed_precision=fp16"),
                    r"stage\.ppo\.mixed_precision=fp16: PPO does not train in fp16 \(it has no loss scaling\)"),
    "missing dataset": (("pipeline.nodes.sft.data=nosuch",), r"pipeline\.nodes\.sft\.data: no dataset 'nosuch' in the data group"),
    "reward-KL unknown node": (("pipeline=full", "eval.reward_kl.enabled=true", "eval.reward_kl.reward=rm_gld"),
                               r"eval\.reward_kl\.reward: no node 'rm_gld' in the pipeline \(reward nodes: rm\)"),
    "reward-KL not a reward node": (("pipeline=full", "eval.reward_kl.enabled=true", "eval.reward_kl.reward=dpo"),
                                    r"eval\.reward_kl\.reward: 'dpo' is a dpo node, not a reward node \(reward nodes: rm\)"),
}


@pytest.fixture(scope="module")
def outcomes(data_home, tmp_path_factory):
    """Every case run through the CLI (two at a time) against one stage cache holding a marker file."""
    root = tmp_path_factory.mktemp("preflight")
    cache = root / "cache"
    cache.mkdir()
    (cache / "keep.txt").write_text("untouched")
    env = alignlab_env(data_home, str(root / "models"))

    def run(item):
        name, (overrides, _) = item
        tmp = root / re.sub(r"\W", "_", name)
        tmp.mkdir()
        extra = overrides(tmp) if callable(overrides) else overrides
        keys = {o.split("=")[0] for o in extra}
        base = [o for o in TINY_SFT if o.split("=")[0] not in keys]  # a case may pick eval/judge groups
        cmd = [ALIGNLAB, *base, f"paths.cache_dir={cache}", f"hydra.run.dir={tmp / 'run'}", *extra]
        return name, subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(pool.map(run, CASES.items()))
    return done, cache, root / "models"


@pytest.mark.parametrize("case", list(CASES))
def test_mistake_fails_in_preflight(case, outcomes):
    done, cache, models = outcomes
    result, pattern = done[case], CASES[case][1]
    errors = [line for line in result.stderr.splitlines() if line.startswith("alignlab: error:")]
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(errors) == 1, result.stderr[-3000:]
    assert re.search(pattern, result.stderr), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert [p.name for p in cache.iterdir()] == ["keep.txt"]  # nothing written to the stage cache
    assert not models.exists()  # no model was loaded (an embedded model is converted on first load)


def test_several_problems_are_listed_at_once(data_home, tmp_path):
    cmd = [ALIGNLAB, *TINY_SFT, f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}",
           "stage.dpo.beta=-1", "peft.r=0", "logger.mode=offlne"]
    result = subprocess.run(cmd, env=alignlab_env(data_home, str(tmp_path / "models")), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    assert "alignlab: error: 3 problems in the config:" in result.stderr
    for key in ("stage.dpo.beta", "peft.r", "logger.mode: 'offlne' is not one of offline, online, disabled"):
        assert key in result.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("overrides,nodes", [
    ((), ["sft (sft)", "rm (reward)", "dpo (dpo)", "ppo (ppo)"]),
    (("experiment=paper/instructgpt_mini",), ["sft (sft)", "rm (reward)", "ppo (ppo)"]),
])
def test_dry_run_prints_the_plan_and_trains_nothing(overrides, nodes, data_home, tmp_path):
    cmd = [ALIGNLAB, "check", *overrides, f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(cmd, env=alignlab_env(data_home, str(tmp_path / "models")), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    plan = result.stdout
    for i, node in enumerate(nodes, 1):
        assert re.search(rf"^  {i}\. {re.escape(node)} key [0-9a-f]{{16}}: to train; .* \d+ train / \d+ eval rows$",
                         plan, re.M), plan
    assert re.search(r"^  (forgetting|judge)", plan, re.M)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "models").exists()


# --- collapse -------------------------------------------------------------------------------

LN_V = 10.8  # a uniform distribution's loss over a vocabulary of e^10.8 tokens


@pytest.mark.parametrize("losses,grads,trips_at", [
    ([2.0, 1.8, 10.79, 10.81, 10.80], [1, 1, 1, 1, 1], 5),  # learned, then back to uniform for 3 steps
    ([10.81, 10.80, 10.79, 10.80, 10.78], [1, 1, 1, 1, 1], None),  # random init starts at uniform: no trip
    ([2.0, 1.9, 1.8, 1.7, 1.6], [1, 0, 0, 0, 1], 4),  # zero gradient for 3 steps at a non-zero learning rate
    ([2.0, 10.8, 1.5, 10.8, 10.8], [1, 0, 1, 0, 1], None),  # signals that do not last `patience` steps
])
def test_collapse_watch_signals(losses, grads, trips_at):
    watch = CollapseWatch("sft", "sft", patience=3, tolerance=0.05, uniform_loss=LN_V)
    tripped = None
    for step, (loss, grad) in enumerate(zip(losses, grads), 1):
        try:
            watch.update(step, loss, float(grad), learning_rate=1e-3)
        except TrainingCollapsedError as err:
            tripped = step
            assert f"node sft: training collapsed at step {step}" in str(err)
            break
    assert tripped == trips_at


def test_zero_gradient_at_zero_learning_rate_and_patience_zero_never_trip():
    watch = CollapseWatch("sft", "sft", patience=3, tolerance=0.05, uniform_loss=LN_V)
    for step in range(1, 6):
        watch.update(step, 2.0, 0.0, learning_rate=0.0)
    off = CollapseWatch("sft", "sft", patience=0, tolerance=0.05, uniform_loss=LN_V)
    for step in range(1, 6):
        off.update(step, 2.0, 0.0, learning_rate=1.0)


def test_collapsed_sft_stops_the_pipeline_unpublished(data_home, model_cache, tmp_path):
    """An absurd learning rate collapses the tiny model (zero gradients, no NaN): the sft node stops
    with the collapse error, the dpo node downstream never runs, nothing is published."""
    cache = tmp_path / "cache"
    cmd = [ALIGNLAB, *TINY_SFT, "pipeline=sft_dpo", "stage.sft.learning_rate=1000", "stage.sft.max_steps=12",
           f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(cmd, env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(r"alignlab: error: node sft: training collapsed at step \d+: the gradient norm has been "
                     r"exactly 0 at learning rate", result.stderr), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["nodes"]["sft"]["status"] == "failed" and "dpo" not in summary["nodes"]
    assert not [p for p in cache.iterdir() if p.is_dir() and not p.name.endswith(".partial")]
    assert not list(cache.rglob("COMPLETE"))
