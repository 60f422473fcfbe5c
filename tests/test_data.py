"""Data layer: real mirror files, selection/split, error messages."""
from __future__ import annotations

import bz2
import gzip
import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from alignlab.data import MIRROR, DataConfig, DataError, load_data


@pytest.fixture
def home(data_home) -> str:
    return str(data_home)


def load(source, kind, home=None, **kw):
    return load_data(DataConfig(source=str(source), **kw), kind, data_home=home)


def write_jsonl(path: Path, records, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def all_rows(data):
    return data.train + data.eval


def alpaca_rows(n):
    return [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(n)]


# --- real mirror files ---------------------------------------------------------------------

def test_mirror_names_point_to_existing_files(home):
    for name, entry in MIRROR.items():
        assert (Path(home) / entry.path).is_file(), name


def test_alpaca_eval_outputs_and_dataset_filter(home):
    data = load("alpaca_eval_gpt4", "sft", home, eval_fraction=0)
    assert data.report["read"] == 805 and len(data.train) == 805 and data.eval == []
    raw = json.loads((Path(home) / MIRROR["alpaca_eval_gpt4"].path).read_text())
    assert data.train[0] == {"messages": [{"role": "user", "content": raw[0]["instruction"]},
                                          {"role": "assistant", "content": raw[0]["output"]}]}
    kept = load("alpaca_eval_gpt4", "sft", home, eval_fraction=0, exclude={"dataset": ["vicuna"]})
    assert len(kept.train) == 725 and kept.report["filtered"] == 80
    only = load("alpaca_eval_gpt4", "prompt", home, eval_fraction=0, include={"dataset": ["vicuna"]})
    assert len(only.train) == 80 and all(r["prompt"][-1]["role"] == "user" for r in only.train)


def test_davinci_outputs_have_two_empty_responses(home):
    with pytest.raises(DataError, match=r"row 248 \(JSON list item 248\): field 'messages\[1\].content': empty"):
        load("alpaca_eval_davinci003", "sft", home)
    data = load("alpaca_eval_davinci003", "sft", home, on_bad_row="drop", eval_fraction=0)
    assert data.report["bad"]["rows"] == [248, 505] and len(data.train) == 803


def test_annotations_preferences_and_ties(home):
    data = load("alpaca_eval_gpt4_annotations", "preference", home, eval_fraction=0)
    ties = data.report["ties"]
    assert ties["count"] == 12 and ties["rows"][:3] == [145, 200, 371] and len(data.train) == 793
    raw = json.loads((Path(home) / MIRROR["alpaca_eval_gpt4_annotations"].path).read_text())
    first = data.train[0]
    assert raw[0]["preference"] == 2
    assert first["prompt"] == [{"role": "user", "content": raw[0]["instruction"]}]
    assert first["chosen"][0]["content"] == raw[0]["output_2"]
    assert first["rejected"][0]["content"] == raw[0]["output_1"]
    with pytest.raises(DataError, match=r"annotations\.json: row 145 .*field 'preference': tie"):
        load("alpaca_eval_gpt4_annotations", "preference", home, ties="error")
    assert len(load("alpaca_eval_gpt4_annotations", "prompt", home, eval_fraction=0).train) == 805


def test_hh_rlhf_preference(home):
    with pytest.raises(DataError, match=r"harmless-base-test\.jsonl\.gz: row 87 \(line 87\): field 'chosen\[0\]"):
        load("hh_rlhf_harmless", "preference", home)
    data = load("hh_rlhf_harmless", "preference", home, on_bad_row="drop", eval_fraction=0.1)
    report = data.report
    assert report["read"] == 2312 and report["bad"]["rows"] == [87, 517, 926, 1104]
    rows = all_rows(data)
    assert len(rows) == 2308 and report["train"] + report["eval"] == 2308 and 150 < report["eval"] < 320
    for row in rows:
        assert row["prompt"][-1]["role"] == "user" and row["prompt"][0]["role"] == "user"
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert row["chosen"] != row["rejected"]
        assert not row["chosen"][0]["content"].startswith(" ")
    sft = load("hh_rlhf_harmless", "sft", home, on_bad_row="drop", eval_fraction=0)
    assert len(sft.train) == 2308 and all(r["messages"][-1]["role"] == "assistant" for r in sft.train)
    prompts = load("hh_rlhf_harmless", "prompt", home, eval_fraction=0)
    assert prompts.report["duplicates"]["count"] == 2 and len(prompts.train) == 2310


def test_oasst_trees(home):
    sft = load("oasst_en_100", "sft", home, eval_fraction=0)
    assert len(sft.train) == 100
    for row in sft.train:
        roles = [m["role"] for m in row["messages"]]
        assert roles[-1] == "assistant" and roles == ["user", "assistant"] * (len(roles) // 2)
    assert max(len(r["messages"]) for r in sft.train) >= 4

    ranks = {}  # (prompter text, reply text) -> rank, from the raw trees

    def walk(node):
        for reply in node["replies"]:
            if node["role"] == "prompter" and reply.get("rank") is not None:
                ranks[node["text"], reply["text"]] = reply["rank"]
            walk(reply)

    for line in (Path(home) / MIRROR["oasst_en_100"].path).read_text().splitlines():
        walk(json.loads(line)["prompt"])
    pref = load("oasst_en_100", "preference", home, eval_fraction=0)
    assert pref.report["parsed"] == len(pref.train) == 429
    for row in pref.train:
        question = row["prompt"][-1]["content"]
        assert ranks[question, row["chosen"][0]["content"]] < ranks[question, row["rejected"][0]["content"]]
    prompts = load("oasst_en_100", "prompt", home, eval_fraction=0)
    assert len(prompts.train) == 212 and prompts.report["duplicates"]["count"] == 217
    # ranked_pairs=all: every two replies of different rank, C(K, 2) per prompt with K distinct ranks
    every = load("oasst_en_100", "preference", home, eval_fraction=0, ranked_pairs="all")
    assert len(every.train) == 754
    for row in every.train:
        question = row["prompt"][-1]["content"]
        assert ranks[question, row["chosen"][0]["content"]] < ranks[question, row["rejected"][0]["content"]]
    per_prompt = {}
    for row in every.train:
        per_prompt.setdefault(json.dumps(row["prompt"]), set()).update(
            {row["chosen"][0]["content"], row["rejected"][0]["content"]})
    counts = [sum(json.dumps(r["prompt"]) == key for r in every.train) for key in per_prompt]
    assert max(counts) >= 6 and all(n <= len(replies) * (len(replies) - 1) // 2
                                    for n, replies in zip(counts, per_prompt.values()))
    with pytest.raises(DataError, match=r"ranked_pairs=all: format 'hh_rlhf' has no ranked replies"):
        load("hh_rlhf_harmless", "preference", home, ranked_pairs="all")


def test_self_instruct_gsm8k_code_alpaca(home):
    raw = [json.loads(x) for x in (Path(home) / MIRROR["self_instruct_user"].path).read_text().splitlines()]
    data = load("self_instruct_user", "sft", home, eval_fraction=0)
    assert len(data.train) == sum(len(r["instances"]) for r in raw) == 252
    gsm = load("gsm8k_train", "sft", home, eval_fraction=0)
    assert len(gsm.train) == 7473 and all("#### " in r["messages"][1]["content"] for r in gsm.train)
    code = load("code_alpaca", "sft", home, on_bad_row="drop", eval_fraction=0)
    assert code.report["read"] == 2017 and code.report["bad"]["rows"] == [238, 1860] and len(code.train) == 2015
    with_input = [r for r in code.train if "\n\n" in r["messages"][0]["content"]]
    assert len(with_input) >= 1000


def test_gsm8k_prompts_carry_their_reference_answer(home):
    data = load("gsm8k_train", "prompt", home, eval_fraction=0, system_prompt="Answer with #### N.")
    assert len(data.train) == 7473
    first = data.train[0]
    assert first["prompt"][0] == {"role": "system", "content": "Answer with #### N."}
    assert first["prompt"][1]["content"].startswith("Natalia sold clips")
    assert first["reference"].endswith("#### 72")


def test_columns_prompt_reference(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"q": "1+1?", "a": "2"}, {"q": "2+2?", "a": " "}])
    data = load(path, "prompt", format="columns", columns={"prompt": "q", "reference": "a"}, eval_fraction=0,
                on_bad_row="drop")
    assert data.train == [{"prompt": [{"role": "user", "content": "1+1?"}], "reference": "2"}]
    assert data.report["bad"]["examples"] == ["row 2: field 'reference': expected a non-empty string"]


def test_question_prompts(home):
    mt = load("mtbench", "prompt", home, eval_fraction=0)
    assert len(mt.train) == 80 and mt.train[0]["prompt"][0]["content"].startswith("Compose an engaging travel blog")
    vicuna = load("vicuna", "prompt", home, eval_fraction=0)
    assert len(vicuna.train) == 80
    assert vicuna.train[0] == {"prompt": [{"role": "user", "content": "How can I improve my time management skills?"}]}
    with pytest.raises(DataError, match="format 'mtbench' cannot yield 'sft' rows"):
        load("mtbench", "sft", home)


def test_dictconfig_and_system_prompt(home):
    cfg = OmegaConf.structured(DataConfig(source="vicuna", system_prompt="Be brief.", eval_fraction=0.0,
                                          include={"category": ["math", "coding"]}))
    data = load_data(cfg, "prompt", data_home=home)
    assert len(data.train) == 10 and data.report["filtered"] == 70
    assert all(r["prompt"][0] == {"role": "system", "content": "Be brief."} for r in data.train)


# --- split, dedup, limits ------------------------------------------------------------------

def test_split_is_deterministic_disjoint_and_stable(home, tmp_path):
    a = load("alpaca_eval_gpt4", "sft", home, eval_fraction=0.1, split_seed=1)
    b = load("alpaca_eval_gpt4", "sft", home, eval_fraction=0.1, split_seed=1)
    c = load("alpaca_eval_gpt4", "sft", home, eval_fraction=0.1, split_seed=2)
    assert (a.train, a.eval, a.fingerprint) == (b.train, b.eval, b.fingerprint)
    assert a.eval != c.eval and a.fingerprint != c.fingerprint
    keys = lambda rows: {json.dumps(r, sort_keys=True) for r in rows}  # noqa: E731
    assert not keys(a.train) & keys(a.eval) and len(keys(a.train) | keys(a.eval)) == 805
    assert 40 < len(a.eval) < 125

    small = load(write_jsonl(tmp_path / "s.jsonl", alpaca_rows(200)), "sft", format="alpaca", eval_fraction=0.2)
    big = load(write_jsonl(tmp_path / "b.jsonl", alpaca_rows(400)), "sft", format="alpaca", eval_fraction=0.2)
    assert small.eval and keys(small.eval) <= keys(big.eval) and keys(small.train) <= keys(big.train)


def test_pairs_sharing_a_prompt_land_on_the_same_side_in_every_kind(home, tmp_path):
    from alignlab.data.selection import prompt_key

    def sides(*datasets):
        found = {}
        for data in datasets:
            for side, rows in (("train", data.train), ("eval", data.eval)):
                for row in rows:
                    found.setdefault(prompt_key(row), set()).add(side)
        return found

    oasst = load("oasst_en_100", "preference", home, eval_fraction=0.3)  # ranked sibling replies share a prompt
    by_prompt = sides(oasst)
    assert len(by_prompt) < len(oasst.train + oasst.eval)  # prompts with several pairs exist
    assert all(len(s) == 1 for s in by_prompt.values()) and {"train", "eval"} == set().union(*by_prompt.values())

    # the same prompts, whitespace and case varied, as sft rows and as preference pairs
    sft = [{"instruction": f"  Question\n{i}?", "output": f"answer {i}"} for i in range(120)]
    asked = lambda i, j: {"role": "user", "content": (f"QUESTION {i}? ", f"question  {i}?")[j]}  # noqa: E731
    pairs = [{"chosen": [asked(i, j), {"role": "assistant", "content": f"yes {i}"}],
              "rejected": [asked(i, j), {"role": "assistant", "content": f"no {j}"}]}
             for i in range(120) for j in range(2)]
    a = load(write_jsonl(tmp_path / "sft.jsonl", sft), "sft", format="alpaca", eval_fraction=0.25)
    b = load(write_jsonl(tmp_path / "pairs.jsonl", pairs), "preference", format="messages", eval_fraction=0.25)
    by_prompt = sides(a, b)
    assert len(by_prompt) == 120 and all(len(s) == 1 for s in by_prompt.values())
    assert 2 * len(a.eval) == len(b.eval) > 0


def test_shards_split_training_rows_by_prompt_and_keep_the_held_out_rows(tmp_path):
    from alignlab.data.selection import prompt_key

    asked = lambda i, j: {"role": "user", "content": (f"Question {i}?", f" QUESTION  {i}?")[j]}  # noqa: E731
    pairs = [{"chosen": [asked(i, j), {"role": "assistant", "content": f"yes {i}"}],
              "rejected": [asked(i, j), {"role": "assistant", "content": f"no {j}"}]}
             for i in range(90) for j in range(2)]  # two pairs per prompt, the prompt's case and spaces varied
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    cfg = DataConfig(source=str(path), format="messages", eval_fraction=0.2, max_train_rows=20)
    whole = load_data(cfg, "preference")
    shards = [load_data(cfg, "preference", shard=(i, 3)) for i in (1, 2, 3)]
    prompts = [{prompt_key(r) for r in s.train} for s in shards]
    assert all(prompts) and not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert all(s.eval == whole.eval for s in shards)  # one held-out split for every shard
    rows = shards[0].report["shard"]["rows"]
    assert sum(rows) == whole.report["train"] + whole.report["truncated"]["train"]  # before max_train_rows
    assert all(s.report["shard"] == {"index": i, "count": 3, "rows": rows} for i, s in enumerate(shards, 1))
    assert [s.report["train"] for s in shards] == [min(20, n) for n in rows]
    assert len({whole.fingerprint, *(s.fingerprint for s in shards)}) == 4


def _overlap(compose, *overrides):
    from alignlab.preflight import preflight

    checked = preflight(compose("experiment=paper/dpo_hh_mini", *overrides))
    return checked.overlap, checked.data


def test_dpo_hh_mini_holds_out_no_prompt_its_sft_node_trained_on(compose):
    overlap, data = _overlap(compose)
    assert overlap == {"sft": 0, "dpo": 0} and len(data["dpo"].eval) == 4
    # without the row limits: every held-out pair of the DPO node, against every SFT training row
    overlap, data = _overlap(compose, "data.sft.max_train_rows=null", "data.preference.max_eval_rows=null")
    assert overlap == {"sft": 0, "dpo": 0} and len(data["dpo"].eval) > 80 and len(data["sft"].train) > 800
    # a larger held-out fraction downstream leaks, and is counted
    overlap, data = _overlap(compose, "data.sft.max_train_rows=null", "data.preference.max_eval_rows=null",
                             "data.preference.eval_fraction=0.3")
    assert 0 < overlap["dpo"] < len(data["dpo"].eval) and overlap["sft"] == 0


def test_dedup_and_limits(tmp_path):
    records = alpaca_rows(30) + alpaca_rows(5) + [{"instruction": "long", "output": "x" * 500}]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    data = load(path, "sft", format="alpaca", eval_fraction=0, max_chars=100)
    assert data.report["duplicates"] == {"count": 5, "rows": [31, 32, 33, 34, 35]}
    assert data.report["too_long"] == {"count": 1, "rows": [36]}
    assert len(data.train) == 30
    assert len(load(path, "sft", format="alpaca", eval_fraction=0, dedup=False).train) == 36

    full = load(path, "sft", format="alpaca", eval_fraction=0.3)
    cut = load(path, "sft", format="alpaca", eval_fraction=0.3, max_train_rows=4, max_eval_rows=2)
    assert cut.train == full.train[:4] and cut.eval == full.eval[:2]
    assert cut.report["truncated"] == {"train": len(full.train) - 4, "eval": len(full.eval) - 2}
    assert cut.fingerprint != full.fingerprint


# --- generic and other formats -------------------------------------------------------------

def test_columns_csv_sft(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('q,a,sys\n"What is 2+2?",4,You are terse.\nName a colour,"blue, or red",\n', encoding="utf-8")
    columns = {"prompt": "q", "response": "a", "system": "sys"}
    data = load(path, "sft", format="columns", columns=columns, eval_fraction=0)
    assert data.train == [
        {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"},
                      {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "blue, or red"}]},
    ]
    with pytest.raises(DataError, match=r"needs columns \['prompt', 'chosen', 'rejected'\]"):
        load(path, "preference", format="columns", columns=columns)
    with pytest.raises(DataError, match=r"rows\.csv: row 1 \(CSV data row 1, header not counted\): field 'nope'"):
        load(path, "sft", format="columns", columns={"prompt": "q", "response": "nope"})


def test_columns_jsonl_gz_preference_and_identical_pair(tmp_path):
    records = [{"p": f"prompt {i}", "good": f"good {i}", "bad": f"bad {i}"} for i in range(6)]
    records[3]["bad"] = records[3]["good"]
    path = write_jsonl(tmp_path / "pairs.jsonl.gz", records, gzip.open)
    columns = {"prompt": "p", "chosen": "good", "rejected": "bad"}
    with pytest.raises(DataError, match=r"pairs\.jsonl\.gz: row 4 \(line 4\): field 'rejected': same text as 'chosen'"):
        load(path, "preference", format="columns", columns=columns)
    data = load(path, "preference", format="columns", columns=columns, on_bad_row="drop", eval_fraction=0)
    assert len(data.train) == 5 and data.report["bad"]["rows"] == [4]
    assert data.train[0] == {"prompt": [{"role": "user", "content": "prompt 0"}],
                             "chosen": [{"role": "assistant", "content": "good 0"}],
                             "rejected": [{"role": "assistant", "content": "bad 0"}]}
    prompts = load(path, "prompt", format="columns", columns=columns, eval_fraction=0)
    assert len(prompts.train) == 6


def test_sharegpt_messages_and_bz2_json(tmp_path):
    conv = {"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "hi"},
                              {"from": "gpt", "value": "hello"}, {"from": "human", "value": "bye"},
                              {"from": "gpt", "value": "ciao"}]}
    path = tmp_path / "chat.json.bz2"
    with bz2.open(path, "wt", encoding="utf-8") as f:
        json.dump([conv, {"conversations": [{"from": "human", "value": "x"}, {"from": "bot", "value": "y"}]}], f)
    with pytest.raises(DataError, match=r"row 2 \(JSON list item 2\): field 'conversations\[1\]\.from'"):
        load(path, "sft", format="sharegpt")
    data = load(path, "sft", format="sharegpt", on_bad_row="drop", eval_fraction=0)
    assert [m["role"] for m in data.train[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    prompt = load(path, "prompt", format="sharegpt", on_bad_row="drop", eval_fraction=0).train[0]["prompt"]
    assert prompt[-1] == {"role": "user", "content": "bye"}

    msgs = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}]
    path = write_jsonl(tmp_path / "m.jsonl", msgs)
    with pytest.raises(DataError, match=r"row 2 \(line 2\): field 'messages\[1\]\.role': expected 'assistant'"):
        load(path, "sft", format="messages")


def test_messages_preference_pairs(tmp_path):
    """UltraFeedback-binarized rows: chosen/rejected whole conversations sharing their prompt."""
    user = {"role": "user", "content": "Name a prime"}
    rows = [{"prompt": "Name a prime", "chosen": [user, {"role": "assistant", "content": "7"}],
             "rejected": [user, {"role": "assistant", "content": "8"}]},
            {"chosen": [user, {"role": "assistant", "content": "3"}],
             "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "4"}]}]
    path = write_jsonl(tmp_path / "uf.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2 \(line 2\): field 'rejected': conversation before the final"):
        load(path, "preference", format="messages")
    data = load(path, "preference", format="messages", on_bad_row="drop", eval_fraction=0)
    assert data.train == [{"prompt": [user], "chosen": [{"role": "assistant", "content": "7"}],
                           "rejected": [{"role": "assistant", "content": "8"}]}]
    assert load(path, "prompt", format="messages", on_bad_row="drop", eval_fraction=0).train == [{"prompt": [user]}]


def test_guanaco_transcripts(tmp_path):
    rows = [{"text": "### Human: Hola### Assistant: ¡Hola! ¿Qué tal?### Human: Bien### Assistant: Me alegro."},
            {"text": "### Human: only a question"}]
    path = write_jsonl(tmp_path / "guanaco.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2 \(line 2\): field 'text': no 'Assistant:' turn"):
        load(path, "sft", format="guanaco")
    data = load(path, "sft", format="guanaco", on_bad_row="drop", eval_fraction=0)
    assert data.train[0]["messages"] == [{"role": "user", "content": "Hola"},
                                         {"role": "assistant", "content": "¡Hola! ¿Qué tal?"},
                                         {"role": "user", "content": "Bien"},
                                         {"role": "assistant", "content": "Me alegro."}]


def test_annotation_fractional_preference_is_a_tie(tmp_path):
    records = [{"instruction": "q", "output_1": "a", "output_2": "b", "preference": p} for p in (1, 1.5, 2.0)]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(records))
    data = load(path, "preference", format="alpaca_eval_annotations", eval_fraction=0)
    assert data.report["ties"]["rows"] == [2]
    assert [r["chosen"][0]["content"] for r in data.train] == ["a", "b"]


# --- errors --------------------------------------------------------------------------------

def test_bad_rows_name_file_row_and_field(tmp_path, caplog):
    lines = [json.dumps(r) for r in alpaca_rows(2)] + ['{"instruction": "broken", "output": ']
    path = write_jsonl(tmp_path / "broken.jsonl", lines)
    with pytest.raises(DataError, match=r"broken\.jsonl: line 3: malformed JSON"):
        load(path, "sft", format="alpaca", on_bad_row="drop")

    records = alpaca_rows(5)
    del records[3]["output"]
    records[1]["output"] = "   "
    path = write_jsonl(tmp_path / "missing.jsonl", records)
    with pytest.raises(DataError) as err:
        load(path, "sft", format="alpaca")
    assert str(err.value).startswith(f"{path}: row 2 (line 2): field 'messages[1].content': empty assistant")
    with caplog.at_level(logging.WARNING, logger="alignlab.data"):
        data = load(path, "sft", format="alpaca", on_bad_row="drop", eval_fraction=0)
    bad = data.report["bad"]
    assert bad["count"] == 2 and bad["rows"] == [2, 4] and len(data.train) == 3
    assert bad["examples"][1] == "row 4: field 'output': missing"
    assert "dropped 2 row(s) as bad, first rows [2, 4]" in caplog.text


def test_empty_selection_errors(home, tmp_path):
    with pytest.raises(DataError, match="no records left after include/exclude"):
        load("alpaca_eval_gpt4", "sft", home, include={"dataset": ["no_such_dataset"]})
    path = write_jsonl(tmp_path / "one.jsonl", alpaca_rows(1))
    with pytest.raises(DataError, match="no train rows after the split"):
        load(path, "sft", format="alpaca", eval_fraction=0.999999)
    path = write_jsonl(tmp_path / "empty.jsonl", [{"instruction": "q", "output": ""}])
    with pytest.raises(DataError, match=r"no valid 'sft' rows after parsing \(1 parsed, 1 bad"):
        load(path, "sft", format="alpaca", on_bad_row="drop")
    with pytest.raises(DataError, match="no rows left after max_chars=3"):
        load(write_jsonl(tmp_path / "two.jsonl", alpaca_rows(2)), "sft", format="alpaca", max_chars=3)


def test_unknown_source_and_missing_data_home(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"unknown data source 'no_such_set'.*alpaca_eval_gpt4.*vicuna"):
        load("no_such_set", "sft")
    monkeypatch.delenv("ALIGNLAB_DATA_HOME", raising=False)
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ALIGNLAB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"prompts/vicuna_question\.jsonl is not in .*downloads are off "
                                        r"\(ALIGNLAB_OFFLINE=1\).*alignlab data fetch.*ALIGNLAB_DATA_HOME"):
        load("vicuna", "prompt")
    monkeypatch.setenv("ALIGNLAB_DATA_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"nowhere \(from ALIGNLAB_DATA_HOME\) is not a directory"):
        load("vicuna", "prompt")
    with pytest.raises(DataError, match="needs data.format"):
        load(write_jsonl(tmp_path / "x.jsonl", alpaca_rows(1)), "sft")
    with pytest.raises(DataError, match="unknown data format 'alpacca'"):
        load(tmp_path / "x.jsonl", "sft", format="alpacca")


def test_hub_offline_gives_clear_error(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the libraries read the variable at import time: mirror a process started offline
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as err:
        load("hub:alignlab-tests/no-such-dataset", "sft", format="alpaca")
    message = str(err.value)
    assert "alignlab-tests/no-such-dataset" in message and "offline" in message
    assert "use a local file or a mirror name" in message
