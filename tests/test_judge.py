"""Pairwise judge: strict verdict parsing (a corpus of replies), swap-debiased P(better) and its
summary, templates, and a judged tiny pipeline with its report and W&B compare run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.errors import ConfigError
from alignlab.eval.judge.runner import default_comparisons
from alignlab.eval.judge.templates import load_template
from alignlab.eval.judge.verdicts import Judgement, parse_verdict, summarise, swap_debiased
from alignlab.stats import wilson_interval
from conftest import TINY_PREFERENCE, TINY_SFT
from wandb_records import records


CORPUS = [
    # FastChat's strict format decides when present
    ("Assistant A is more detailed. [[A]]", "A"),
    ("Output [[A]] if A is better ... my verdict: [[B]]", "B"),
    ("Both are equally good. [[C]]", "tie"),
    ("[[ b ]]", "B"),
    ('Format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie. '
     "My verdict: [[B]]", "B"),
    ("A is better at first glance, but overall [[B]]", "B"),
    ("[[A]]\n\nFinal: [[A]]", "A"),
    ("[[C]] - it is not a tie in style, but in substance.", "tie"),
    ("First I thought [[A]], on reflection [[B]]", None),
    ("[[D]]", None),
    # the three misreadings of issue 13
    ("B is better. A lacks detail.", "B"),
    ("The verdict is a close call but B wins", "B"),
    ("Assistant A is better. It is not a tie.", "A"),
    # loose forms, unambiguous
    ("Final verdict: [A]", "A"),
    ("The winner is Assistant B.", "B"),
    ("Assistant A is better than B.", "A"),
    ("I would call this a tie.", "tie"),
    ("Verdict: B", "B"),
    ("My decision is Assistant A.", "A"),
    ("I prefer Assistant B because it is concise.", "B"),
    ("Response A is worse than response B.", "B"),
    ("Both answers are equally helpful.", "tie"),
    ("Neither is better.", "tie"),
    ("Assistant B's answer is clearly better.", "B"),
    ("There is no tie here: A wins.", "A"),
    ("Assistant A is the winner!", "A"),
    ("Winner: tie", "tie"),
    # ambiguous or no verdict: unparseable, never guessed
    ("I don't think Assistant A is better.", None),
    ("Assistant A is better in style, but Assistant B is better in accuracy.", None),
    ("A is better, though it is close to a tie.", None),
    ("[A] is more polite but [B] is correct.", None),
    ("The verdict is a difficult one.", None),
    ("a is better", None),
    ("B", None),
    ("Both answers are fine.", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize("reply, verdict", CORPUS)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_judgement_from_probabilities_or_text():
    assert Judgement.of({"A": 2.0, "B": 1.0, "C": 1.0}, "[[B]]") == Judgement(0.5, 0.25, 0.25)  # probabilities first
    assert Judgement.of(None, "Verdict: [[B]]") == Judgement(0.0, 1.0, 0.0)
    assert Judgement.of(None, "[[C]]") == Judgement(0.0, 0.0, 1.0)
    assert Judgement.of(None, "no idea") is None
    assert Judgement(0.3, 0.1, 0.6).a_share == pytest.approx(0.75) and Judgement(0, 0, 1).a_share == 0.5


@pytest.mark.parametrize("x_first, x_second, margin, expected", [
    # x = (0.6 + 0.5) / 2 = 0.55, y = (0.2 + 0.3) / 2 = 0.25: P = 0.55 / 0.8 = 0.6875; both orders lean to X
    ((0.6, 0.2, 0.2), (0.3, 0.5, 0.2), 0.05, (0.6875, 0.2, "win", True)),
    ((0.2, 0.6, 0.2), (0.5, 0.3, 0.2), 0.05, (0.3125, 0.2, "loss", True)),
    # always the first position: pure position bias cancels to 0.5
    ((0.7, 0.1, 0.2), (0.7, 0.1, 0.2), 0.05, (0.5, 0.2, "tie", False)),
    # x = (0.52 + 0.56) / 2 = 0.54, y = 0.46: a tie within 0.05 of 0.5, a win at margin 0
    ((0.52, 0.48, 0.0), (0.44, 0.56, 0.0), 0.05, (0.54, 0.0, "tie", True)),
    ((0.52, 0.48, 0.0), (0.44, 0.56, 0.0), 0.0, (0.54, 0.0, "win", True)),
    # parsed verdicts are one-hot: A then B is a consistent win; A then a tie leans to X with tie mass 0.5
    ((1, 0, 0), (0, 1, 0), 0.05, (1.0, 0.0, "win", True)),
    ((1, 0, 0), (0, 0, 1), 0.05, (1.0, 0.5, "win", False)),
    ((0, 0, 1), (0, 0, 1), 0.05, (0.5, 1.0, "tie", True)),
    ((1, 0, 0), (1, 0, 0), 0.05, (0.5, 0.0, "tie", False)),
])
def test_swap_debiased(x_first, x_second, margin, expected):
    got = swap_debiased(Judgement(*x_first), Judgement(*x_second), margin)
    assert (got["p_better"], got["tie_mass"]) == pytest.approx(expected[:2], abs=1e-6)
    assert (got["outcome"], got["consistent"]) == expected[2:]


def test_summarise_hand_computed():
    win = swap_debiased(Judgement(0.6, 0.2, 0.2), Judgement(0.3, 0.5, 0.2), 0.05)  # P 0.6875
    tie = swap_debiased(Judgement(0.7, 0.1, 0.2), Judgement(0.7, 0.1, 0.2), 0.05)  # P 0.5
    s = summarise([win, tie, None], a_shares=[0.75, 0.375, 0.875, 0.875], confidence=0.95)
    assert (s["win"], s["tie"], s["loss"], s["unparseable"], s["n"]) == (1, 1, 0, 1, 2)
    assert s["p_better"] == pytest.approx((0.6875 + 0.5) / 2)
    assert s["p_better_ci"] == [0.5, 0.6875]  # two prompts: the resampled means span both values
    assert s["win_rate"] == 0.5 and s["win_rate_ci"] == pytest.approx(list(wilson_interval(1, 2)))
    assert s["tie_mass"] == pytest.approx(0.2) and s["consistency"] == 0.5
    assert s["position_bias"] == pytest.approx((0.75 + 0.375 + 0.875 + 0.875) / 4 - 0.5)  # 0.21875
    empty = summarise([None], [])
    assert empty["n"] == 0 and empty["p_better"] is None and empty["position_bias"] is None


def test_default_comparisons():
    parents = {"sft": None, "dpo": "sft", "ppo": "sft"}
    stages = {"sft": "sft", "dpo": "dpo", "ppo": "ppo"}
    assert default_comparisons(parents, stages) == [("sft", "base"), ("dpo", "sft"), ("ppo", "sft"), ("dpo", "ppo")]


def test_templates_from_mirror_and_user_file(data_home, tmp_path):
    pair = load_template("pair-v2", str(data_home))
    messages = pair.messages("Q?", "first", "second")
    assert "[[A]]" in messages[0]["content"] and "[[C]]" in messages[0]["content"]
    assert "Q?" in messages[1]["content"] and messages[1]["content"].index("first") < messages[1]["content"].index("second")
    with pytest.raises(ConfigError, match="no pairwise template 'single-v1'.*pair-v2"):
        load_template("single-v1", str(data_home))
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"name": "mine", "system_prompt": "Judge.",
                                "prompt_template": "{question}|{answer_a}|{answer_b}"}) + "\n")
    assert load_template(str(mine)).messages("q", "a", "b")[1]["content"] == "q|a|b"
    mine.write_text(json.dumps({"system_prompt": "Judge.", "prompt_template": "{question} {answer_a}"}) + "\n")
    with pytest.raises(ConfigError, match=r"mine.jsonl: prompt_template lacks \{answer_b\}"):
        load_template(str(mine))


JUDGED_TINY = (
    *TINY_SFT, *TINY_PREFERENCE, "pipeline=sft_dpo", "stage.sft.max_steps=2", "stage.dpo.max_steps=2",
    "judge=local", "judge.local.name_or_path=embedded:tiny-llama", "judge.num_prompts=3",
    "judge.max_new_tokens=8", "judge.batch_size=3", "judge.calibration.pairs=4",
)


def _run(compose, tmp_path, run_name, *extra):
    from alignlab.pipeline import run

    cfg = compose(*JUDGED_TINY, f"paths.run_dir={tmp_path / run_name}", *extra)
    return run(cfg), tmp_path / run_name


def test_judged_pipeline_report_and_cache(compose, tmp_path):
    record, run_dir = _run(compose, tmp_path, "run1")
    judge = record.judge
    assert judge.template.endswith("pair-v2") and judge.prompts.count == 3
    assert set(judge.responses) == {"base", "sft", "dpo"}
    assert set(judge.comparisons) == {"sft:base", "dpo:sft"}
    for c in judge.comparisons.values():
        # The logprob verdict always parses: every prompt has a P(a better), and is a win, tie or loss.
        assert c.unparseable == 0 and c.win + c.tie + c.loss == c.n == 3
        assert 0.0 <= c.p_better_ci[0] <= c.p_better <= c.p_better_ci[1] <= 1.0
        assert 0.0 <= c.win_rate_ci[0] <= c.win_rate <= c.win_rate_ci[1] <= 1.0
        assert 0.0 <= c.tie_mass <= 1.0 and -0.5 <= c.position_bias <= 0.5 and 0 <= c.consistency <= 1
    lines = [json.loads(l) for l in (run_dir / "judgements.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 3 and all(l["reply_a_first"] and l["reply_b_first"] for l in lines)
    for line in lines:  # the judgements are the judge's probabilities; P(a better) follows from them
        first, second = line["judgement_a_first"], line["judgement_b_first"]
        assert sum(first.values()) == pytest.approx(1.0) and sum(second.values()) == pytest.approx(1.0)
        x, y = (first["A"] + second["B"]) / 2, (first["B"] + second["A"]) / 2
        assert line["p_a_better"] == pytest.approx(x / (x + y))
    sft = judge.comparisons["sft:base"]
    assert sft.p_better == pytest.approx(sum(l["p_a_better"] for l in lines if l["a"] == "sft") / 3)
    # Calibrated first on 4 labelled pairs per set; every comparison says whether the judge is informative.
    calibration = judge.calibration
    assert set(calibration.sets) == {"alpaca_eval_gpt4_annotations", "human:preference"}
    for m in calibration.sets.values():
        assert m.n == 4 and m.agreement_ci[0] <= m.agreement <= m.agreement_ci[1]
    assert calibration.informative == all(m.informative for m in calibration.sets.values())
    assert all(c.judge_informative == calibration.informative for c in judge.comparisons.values())
    for model in ("base", "sft", "dpo"):
        rows = [json.loads(l) for l in (run_dir / "responses" / f"{model}.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and rows[0]["question"] == "How can I improve my time management skills?"

    md = (run_dir / "report.md").read_text()
    for heading in ("## Nodes", "## Forgetting checks", "## Judge", "Sample responses", "sft vs base", "dpo vs sft",
                    "P(a better) (CI)", "position bias", "tie mass"):
        assert heading in md
    for png in ("curves_sft.png", "curves_dpo.png", "judge_p_better.png"):
        assert (run_dir / "plots" / png).is_file() and f"plots/{png}" in md
    html = (run_dir / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == 3 and "<table>" in html

    # Second run: responses and verdicts come from the cache, the judgements are identical.
    cache = Path(compose(*JUDGED_TINY).paths.cache_dir) / "judge"
    entries = sorted(cache.rglob("*.json"))
    record2, run_dir2 = _run(compose, tmp_path, "run2")
    assert sorted(cache.rglob("*.json")) == entries
    assert record2.judge.comparisons == judge.comparisons
    assert (run_dir2 / "judgements.jsonl").read_text() == (run_dir / "judgements.jsonl").read_text()


def test_compare_run_in_wandb_offline(compose, tmp_path):
    _, run_dir = _run(compose, tmp_path, "run", "logger=wandb", "judge.comparisons=[dpo:base]", "judge.calibrate=false")
    compare = None
    for path in run_dir.glob("wandb/offline-run-*/run-*.wandb"):
        recs = list(records(path))
        run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
        if run.job_type == "compare":
            compare = (run, recs)
    assert compare is not None, "no W&B run with job_type compare"
    run, recs = compare
    assert run.run_group == "quickstart" and run.display_name == "quickstart-compare"
    logged = {item.key or "/".join(item.nested_key)
              for r in recs if r.WhichOneof("record_type") == "history" for item in r.history.item}
    # A table or image is logged as a nested entry ({"_type": "table-file", ...}).
    assert {"judge/_type", "plots/judge_p_better/_type", "plots/curves_dpo/_type"} <= logged
    table_files = list(run_dir.glob("wandb/offline-run-*/files/media/table/judge_*.table.json"))
    assert len(table_files) == 1
    table = json.loads(table_files[0].read_text())
    assert table["columns"][:3] == ["a", "b", "p_better"] and [row[:2] for row in table["data"]] == [["dpo", "base"]]
    assert {"tie_mass", "position_bias", "consistency"} <= set(table["columns"])
    assert table["data"][0][table["columns"].index("judge_informative")] is None  # not calibrated
    assert "Judge calibration" not in (run_dir / "report.md").read_text()
    assert "not calibrated" in (run_dir / "report.md").read_text()


def test_bad_comparison_names_the_key(compose, tmp_path):
    with pytest.raises(ConfigError, match=r"judge.comparisons: 'dpo:ppo': no generative node or base named 'ppo' \(have: base, sft, dpo\)"):
        _run(compose, tmp_path, "run", "judge.comparisons=[dpo:ppo]")
