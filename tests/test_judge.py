"""Pairwise judge: verdict parsing, position-swap aggregation, Wilson intervals, templates, and a
judged tiny pipeline with its report and W&B compare run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.errors import ConfigError
from alignlab.eval.judge.runner import default_comparisons
from alignlab.eval.judge.templates import load_template
from alignlab.eval.judge.verdicts import combine, parse_verdict, tally, wilson_interval
from conftest import TINY_PREFERENCE, TINY_SFT
from wandb_records import records


@pytest.mark.parametrize("reply, verdict", [
    ("Assistant A is more detailed. [[A]]", "A"),
    ("Output [[A]] if A is better ... my verdict: [[B]]", "B"),  # the last strict verdict wins
    ("Both are equally good. [[C]]", "tie"),
    ("[[ b ]]", "B"),
    ("Final verdict: [A]", "A"),
    ("The winner is Assistant B.", "B"),
    ("Assistant A is better than B.", "A"),
    ("I would call this a tie.", "tie"),
    ("Both answers are fine.", None),
    ("", None),
    (None, None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize("first, swapped, outcome", [
    ("A", "B", ("win", True)),  # X first and preferred, X second and preferred
    ("B", "A", ("loss", True)),
    ("tie", "tie", ("tie", True)),
    ("A", "A", ("tie", False)),  # always the first position: position bias, no verdict
    ("A", "tie", ("tie", False)),
    (None, "B", ("unparseable", False)),
    ("A", None, ("unparseable", False)),
])
def test_combine_position_swap(first, swapped, outcome):
    assert combine(first, swapped) == outcome


def test_wilson_interval_hand_computed():
    # 2 of 4 at 95%: z = 1.959964, z^2/n = 0.960365, centre = (0.5 + z^2/8) / (1 + z^2/4) = 0.5,
    # half = z * sqrt(0.25/4 + z^2/64) / (1 + z^2/4) = 1.959964 * 0.350033 / 1.960365 = 0.349961
    lo, hi = wilson_interval(2, 4, 0.95)
    assert lo == pytest.approx(0.150039, abs=1e-5) and hi == pytest.approx(0.849961, abs=1e-5)
    # 7 of 10: the textbook interval (0.3968, 0.8922)
    assert wilson_interval(7, 10) == pytest.approx((0.39678, 0.89221), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 5)
    assert lo == 0.0 and hi == pytest.approx(1.959964**2 / 5 / (1 + 1.959964**2 / 5), abs=1e-5)


def test_tally_counts_rates_and_consistency():
    outcomes = [("win", True), ("win", True), ("tie", False), ("loss", True), ("unparseable", False)]
    t = tally(outcomes, 0.95)
    assert (t["win"], t["tie"], t["loss"], t["unparseable"], t["n"]) == (2, 1, 1, 1, 4)
    assert t["win_rate"] == 0.5 and t["loss_rate"] == 0.25
    assert t["win_rate_ci"] == pytest.approx([0.150039, 0.849961], abs=1e-5)
    assert t["consistency"] == 0.75  # 3 of the 4 parseable pairs agreed across orders
    empty = tally([("unparseable", False)])
    assert empty["n"] == 0 and empty["win_rate"] is None and empty["unparseable"] == 1


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
    "judge.max_new_tokens=8", "judge.batch_size=3",
)


def _run(compose, tmp_path, run_name, *extra):
    from alignlab.pipeline import run

    cfg = compose(*JUDGED_TINY, f"paths.run_dir={tmp_path / run_name}", *extra)
    return run(cfg), tmp_path / run_name


def test_judged_pipeline_report_and_cache(compose, tmp_path):
    summary, run_dir = _run(compose, tmp_path, "run1")
    judge = summary["judge"]
    assert judge["template"].endswith("pair-v2") and judge["prompts"]["count"] == 3
    assert set(judge["responses"]) == {"base", "sft", "dpo"}
    assert set(judge["comparisons"]) == {"sft:base", "dpo:sft"}
    for c in judge["comparisons"].values():
        # The logprob verdict always parses: every prompt is a win, tie or loss.
        assert c["unparseable"] == 0 and c["win"] + c["tie"] + c["loss"] == c["n"] == 3
        assert 0.0 <= c["win_rate_ci"][0] <= c["win_rate"] <= c["win_rate_ci"][1] <= 1.0
    lines = [json.loads(l) for l in (run_dir / "judgements.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 3 and all(l["reply_a_first"] and l["reply_b_first"] for l in lines)
    for model in ("base", "sft", "dpo"):
        rows = [json.loads(l) for l in (run_dir / "responses" / f"{model}.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and rows[0]["question"] == "How can I improve my time management skills?"

    md = (run_dir / "report.md").read_text()
    for heading in ("## Nodes", "## Forgetting checks", "## Judge", "Sample responses", "sft vs base", "dpo vs sft"):
        assert heading in md
    for png in ("curves_sft.png", "curves_dpo.png", "judge_win_rates.png"):
        assert (run_dir / "plots" / png).is_file() and f"plots/{png}" in md
    html = (run_dir / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == 3 and "<table>" in html

    # Second run: responses and verdicts come from the cache, the judgements are identical.
    cache = Path(compose(*JUDGED_TINY).paths.cache_dir) / "judge"
    entries = sorted(cache.rglob("*.json"))
    summary2, run_dir2 = _run(compose, tmp_path, "run2")
    assert sorted(cache.rglob("*.json")) == entries
    assert summary2["judge"]["comparisons"] == judge["comparisons"]
    assert (run_dir2 / "judgements.jsonl").read_text() == (run_dir / "judgements.jsonl").read_text()


def test_compare_run_in_wandb_offline(compose, tmp_path):
    _, run_dir = _run(compose, tmp_path, "run", "logger=wandb", "judge.comparisons=[dpo:base]")
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
    assert {"judge/_type", "plots/judge_win_rates/_type", "plots/curves_dpo/_type"} <= logged
    table_files = list(run_dir.glob("wandb/offline-run-*/files/media/table/judge_*.table.json"))
    assert len(table_files) == 1
    table = json.loads(table_files[0].read_text())
    assert table["columns"][:3] == ["a", "b", "win"] and [row[:2] for row in table["data"]] == [["dpo", "base"]]


def test_bad_comparison_names_the_key(compose, tmp_path):
    with pytest.raises(ConfigError, match=r"judge.comparisons: 'dpo:ppo': no generative node or base named 'ppo' \(have: base, sft, dpo\)"):
        _run(compose, tmp_path, "run", "judge.comparisons=[dpo:ppo]")
