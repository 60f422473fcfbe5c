"""Online DPO on the tiny model, continuing an SFT node: pairs labelled by alignlab's judge (its HTTP backend
against a real OpenAI-compatible server on 127.0.0.1 with a deterministic, partly position-biased verdict
rule) or by a reward node; bad settings fail in preflight naming the key."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignlab.errors import ConfigError
from alignlab.eval.judge.calibrate import judge_question
from alignlab.preflight import preflight
from alignlab.stages import online_dpo, reward, sft
from alignlab.stages.context import Artifact, load_inference
from conftest import TINY_PREFERENCE, TINY_SFT, send_json

TINY = (*[arg for arg in TINY_SFT if arg != "judge=none"], "stage.sft.max_steps=2",
        "data.prompts.max_train_rows=6", "data.prompts.max_chars=300",
        "stage.online_dpo.max_steps=2", "stage.online_dpo.per_device_train_batch_size=3",
        "stage.online_dpo.max_new_tokens=8", "stage.online_dpo.learning_rate=5e-3", "stage.online_dpo.save_steps=1")
IDS = torch.tensor([[1, 504, 3101, 2, 15, 88, 7]])
TEMPLATE = {"name": "marked-pair", "system_prompt": "Compare the two answers.",
            "prompt_template": "<<Q>>{question}<<A>>{answer_a}<<B>>{answer_b}<<END>>"}
MARKED = re.compile(r"<<Q>>(.*)<<A>>(.*)<<B>>(.*)<<END>>", re.S)


def rule(question: str, a: str, b: str, biased: set, even: set) -> str:
    """The server's verdict letter: [[A]] whatever the order for `biased` questions (position bias), a tie
    for `even` ones and identical answers, else the longer answer (then the later in sort order)."""
    if question in biased:
        return "A"
    if question in even or a == b:
        return "C"
    return "A" if (len(a), a) > (len(b), b) else "B"


class RuleJudge(ThreadingHTTPServer):
    """An OpenAI-compatible /v1/chat/completions endpoint answering by `rule`; counts its requests."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.biased, self.even, self.requests = set(), set(), 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: RuleJudge

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.server.requests += 1
        question, a, b = MARKED.search(request["messages"][-1]["content"]).groups()
        verdict = rule(question, a, b, self.server.biased, self.server.even)
        body = json.dumps({"id": "r", "object": "chat.completion", "created": 0, "model": request["model"],
                           "choices": [{"index": 0, "finish_reason": "stop", "message": {
                               "role": "assistant", "content": f"My final verdict is: [[{verdict}]]"}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        send_json(self, 200, body)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = RuleJudge()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def judged(server: RuleJudge, tmp_path) -> tuple:
    template = tmp_path / "template.json"
    template.write_text(json.dumps(TEMPLATE))
    return (*TINY, "pipeline=sft_online_dpo", "judge=openai", "judge.calibrate=false", f"judge.template={template}",
            f"judge.openai.base_url={server.url}", "judge.openai.max_retries=0", "judge.openai.concurrency=2")


@pytest.fixture
def sft_artifact(compose, stage_context):
    ctx = stage_context(compose(*TINY, "judge=none", "pipeline=sft_online_dpo"), "sft")
    return Artifact("sft", "sft", "k", ctx.work_dir, sft.run(ctx))


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_judge_labels_skip_inconsistent_and_tied_pairs_policy_trains_reference_frozen(
        compose, stage_context, sft_artifact, judge_server, tmp_path):
    cfg = compose(*judged(judge_server, tmp_path))
    ctx = stage_context(cfg, "online_dpo", upstream={"policy": sft_artifact})
    questions = [judge_question(row["prompt"]) for row in ctx.data.train]
    assert len(set(questions)) == 6
    judge_server.biased, judge_server.even = set(questions[:2]), {questions[2]}

    trainer = online_dpo.build_trainer(ctx)
    model, reference = trainer.model, trainer.ref_model
    start = {k: v for k, v in load_file(str(sft_artifact.adapter_dir / "adapter_model.safetensors")).items()
             if ".lora_" in k}
    policy_params, reference_params = dict(model.named_parameters()), dict(reference.named_parameters())
    for key, value in start.items():  # policy and reference both start as the SFT adapter
        name = key.replace(".weight", ".default.weight")
        assert torch.equal(policy_params[name].detach(), value) and torch.equal(reference_params[name].detach(), value)
    trainable = {n: p.detach().clone() for n, p in policy_params.items() if p.requires_grad}
    assert trainable and all(".lora_" in n and ".default." in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in policy_params.items() if not p.requires_grad}
    assert not any(p.requires_grad for p in reference.parameters())
    reference_before = {n: p.detach().clone() for n, p in reference_params.items()}

    metrics = online_dpo.fit(ctx, trainer)
    assert metrics["train_steps"] == 2
    assert all(not torch.equal(v, policy_params[n]) for n, v in trainable.items())
    assert all(torch.equal(v, policy_params[n]) for n, v in frozen.items())
    assert all(torch.equal(v, reference_params[n]) for n, v in reference_before.items())

    unwrapped = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False).eval()
    with torch.no_grad():
        expected = unwrapped(input_ids=IDS).logits
    reloaded, _ = load_inference(cfg, Artifact("online_dpo", "online_dpo", "k", ctx.work_dir))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)

    rows = _rows(ctx.work_dir / online_dpo.LABELS)
    assert len(rows) == 6 and sorted(judge_question(r["prompt"]) for r in rows) == sorted(questions)
    for row in rows:
        question, (first, second) = judge_question(row["prompt"]), row["completions"]
        verdicts = [rule(question, first, second, judge_server.biased, judge_server.even),
                    rule(question, second, first, judge_server.biased, judge_server.even)]
        stored = [max(v["probs"], key=v["probs"].get) for v in (row["verdicts"]["first_as_a"], row["verdicts"]["second_as_a"])]
        assert stored == [{"C": "tie"}.get(v, v) for v in verdicts]
        if question in judge_server.biased:  # [[A]] in both orders: each order prefers another completion
            assert row["skip"] == "inconsistent" and row["chosen"] is None
        elif verdicts[0] == "C":
            assert row["skip"] == "tie" and row["chosen"] is None
        else:  # consistent: the first completion wins as A and loses as B, or the other way round
            assert row["skip"] is None and row["chosen"] == (0 if verdicts == ["A", "B"] else 1)
            assert row["margin"] == pytest.approx(1.0)
    assert metrics["skipped_inconsistent"] == 2 and metrics["skipped_ties"] >= 1 and metrics["labelled_pairs"] >= 1
    assert metrics["labelled_pairs"] + metrics["skipped_inconsistent"] + metrics["skipped_ties"] == 6
    assert judge_server.requests == 12  # each pair judged once per order
    logged = [json.loads(line) for line in (ctx.work_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "pairs/labelled" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key, total in (("labelled", "labelled_pairs"), ("inconsistent", "skipped_inconsistent"), ("tie", "skipped_ties")):
        assert sum(r[f"pairs/{key}"] for r in steps) == metrics[total]


def test_sft_online_dpo_pipeline_trains_reports_and_the_judge_compares_its_nodes(compose, judge_server, tmp_path):
    from alignlab.pipeline import run as run_pipeline
    from alignlab.report import write_report

    record = run_pipeline(compose(*judged(judge_server, tmp_path), "judge.num_prompts=2", "judge.max_new_tokens=8"))
    node = record.nodes["online_dpo"]
    assert node.status == "trained" and node.upstream == {"policy": "sft"}
    assert node.metrics["pairs"] == 6 and node.metrics["labelled_pairs"] + node.metrics["skipped_ties"] == 6
    assert (Path(node.artifact) / online_dpo.LABELS).is_file()
    assert {"sft:base", "online_dpo:sft"} <= set(record.judge.comparisons)
    report = write_report(record, tmp_path / "report")["report.md"].read_text()
    assert "labelled_pairs" in report and "| online_dpo | online_dpo | trained |" in report


def test_reward_node_labels_the_higher_scored_completion(compose, stage_context, sft_artifact):
    from alignlab.stages.reward import RewardScorer

    cfg = compose(*TINY, "judge=none", *TINY_PREFERENCE, "stage.reward.max_steps=2", "pipeline=sft_rm_online_dpo")
    rm_ctx = stage_context(cfg, "rm", upstream={"init": sft_artifact})
    rm = Artifact("rm", "reward", "k", rm_ctx.work_dir, reward.run(rm_ctx))
    ctx = stage_context(cfg, "online_dpo", upstream={"policy": sft_artifact, "reward": rm})
    metrics = online_dpo.run(ctx)
    assert metrics["train_steps"] == 2 and metrics["pairs"] == 6
    assert metrics["labelled_pairs"] + metrics["skipped_ties"] == 6 and metrics["skipped_inconsistent"] == 0
    assert "final/rewards/margins" in metrics or metrics["labelled_pairs"] == 0
    rows = _rows(ctx.work_dir / online_dpo.LABELS)
    scorer = RewardScorer.from_artifact(rm.path, cfg, ctx.hparams.reward_max_length)
    for row in rows:
        scores = scorer.score([row["prompt"]] * 2, row["completions"], row["finished"]).tolist()
        assert row["scores"] == pytest.approx(scores, rel=1e-4, abs=1e-5)
        if row["scores"][0] == row["scores"][1]:
            assert row["skip"] == "tie" and row["chosen"] is None
            continue
        assert row["skip"] is None and row["chosen"] == int(row["scores"][1] > row["scores"][0])
        assert row["margin"] == pytest.approx(abs(scores[1] - scores[0]), rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (("judge=none",), r"^stage.online_dpo.labeler=judge: the judge is off \(judge=none\)"),
    (("judge=none", "stage.online_dpo.labeler=reward"),
     r"^stage.online_dpo.labeler=reward: pipeline.nodes.online_dpo has no `reward:` upstream node"),
    (("judge=none", "pipeline=sft_rm_online_dpo", "pipeline.nodes.online_dpo.hparams.labeler=judge"),
     r"pipeline.nodes.online_dpo.hparams.labeler=judge: the judge is off"),
    (("judge=openai", "judge.calibrate=false", "pipeline=sft_rm_online_dpo",
      "pipeline.nodes.online_dpo.hparams.labeler=judge"),
     r"^pipeline.nodes.online_dpo.reward: 'rm' labels nothing with pipeline.nodes.online_dpo.hparams.labeler=judge"),
    (("judge=none", "stage.online_dpo.labeler=reward", "stage.online_dpo.loss_type=hinge"),
     r"stage.online_dpo.loss_type: 'hinge' is not one of sigmoid, ipo"),
    (("judge=openai", "judge.calibrate=false", "stage.online_dpo.per_device_train_batch_size=7"),
     r"^pipeline.nodes.online_dpo: 6 training prompt\(s\) in data.prompts, fewer than "
     r"stage.online_dpo.per_device_train_batch_size=7"),
])
def test_bad_settings_fail_in_preflight_naming_the_key(compose, overrides, message):
    pipeline = () if any(o.startswith("pipeline=") for o in overrides) else ("pipeline=sft_online_dpo",)
    with pytest.raises(ConfigError, match=message):
        preflight(compose(*TINY, *TINY_PREFERENCE, *pipeline, *overrides))
