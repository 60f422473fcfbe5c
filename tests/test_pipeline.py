"""Pipeline runner: content-addressed cache, completion marker, summary.json (resume: test_faults.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.eval import ForgettingGateError
from alignlab.node_store import COMPLETE
from alignlab.pipeline import run
from conftest import TINY_SFT


def test_cache_reuses_finished_node_and_keys_on_config_and_data(compose, tmp_path):
    cache = tmp_path / "cache"
    first = run(compose(*TINY_SFT, run_dir=tmp_path / "r1", cache_dir=cache))
    node = first["nodes"]["sft"]
    assert node["status"] == "trained" and Path(node["artifact"], COMPLETE).is_file()
    assert json.loads((tmp_path / "r1" / "summary.json").read_text())["nodes"]["sft"]["key"] == node["key"]
    adapter = Path(node["artifact"], "adapter", "adapter_model.safetensors")
    stamp = adapter.stat().st_mtime_ns

    again = run(compose(*TINY_SFT, run_dir=tmp_path / "r2", cache_dir=cache))["nodes"]["sft"]
    assert again["status"] == "cached" and again["key"] == node["key"]
    assert again["metrics"]["train_loss"] == node["metrics"]["train_loss"]
    assert adapter.stat().st_mtime_ns == stamp  # nothing retrained or rewritten

    lr = run(compose(*TINY_SFT, "stage.sft.learning_rate=1e-3", run_dir=tmp_path / "r3", cache_dir=cache))
    data = run(compose(*TINY_SFT, "data.sft.max_train_rows=24", run_dir=tmp_path / "r4", cache_dir=cache))
    keys = {node["key"], lr["nodes"]["sft"]["key"], data["nodes"]["sft"]["key"]}
    assert len(keys) == 3
    assert lr["nodes"]["sft"]["status"] == data["nodes"]["sft"]["status"] == "trained"
    assert adapter.stat().st_mtime_ns == stamp  # other config keys never write into a finished node


def test_node_without_completion_marker_is_not_reused(compose, tmp_path):
    cache = tmp_path / "cache"
    node = run(compose(*TINY_SFT, run_dir=tmp_path / "r1", cache_dir=cache))["nodes"]["sft"]
    Path(node["artifact"], COMPLETE).unlink()  # as if the process died before publishing
    redo = run(compose(*TINY_SFT, run_dir=tmp_path / "r2", cache_dir=cache))["nodes"]["sft"]
    assert redo["status"] == "trained" and redo["key"] == node["key"]
    assert Path(redo["artifact"], COMPLETE).is_file()


TINY_EVAL = ("eval=forgetting_quick", "eval.tasks=[alignlab_piqa]", "eval.limit=4", "eval.bootstrap_iters=0")


def test_forgetting_checks_base_and_node_into_summary(compose, tmp_path):
    summary = run(compose(*TINY_SFT, *TINY_EVAL, "stage.sft.max_steps=2"))
    section = summary["forgetting"]
    assert section["tasks"] == ["alignlab_piqa"] and 0.0 <= section["base"]["alignlab_piqa"]["acc"] <= 1.0
    assert section["metrics"] == {"alignlab_piqa": {"metric": "acc", "higher_is_better": True, "gated": True}}
    [row] = section["nodes"]["sft"]["deltas"]
    assert row["vs_base"]["delta"] == pytest.approx(100 * (row["node"] - row["base"]))
    assert row["vs_base"]["n"] == 4 and row["vs_base"]["lo"] <= row["vs_base"]["delta"] <= row["vs_base"]["hi"]
    assert summary["nodes"]["sft"]["data"]["overlap"] == 0
    assert list((tmp_path / "cache" / "forgetting").glob("*.json"))  # lm-eval results JSON, cached
    report = (tmp_path / "run" / "report.md").read_text()
    assert "interval's half width; n items" in report and ", n 4 |" in report


def test_a_damaged_node_fails_the_forgetting_gate_naming_node_task_delta_and_interval(compose, tmp_path):
    # SmolLM2 (the random tiny model scores at chance: nothing to lose) after two SFT steps at a
    # destructive learning rate; the collapse guard, which would stop the node first, is off
    cfg = compose(*TINY_SFT, "model=smollm2", "stage.sft.max_steps=2", "stage.sft.learning_rate=0.2",
                  "stage.sft.collapse_patience=0", "eval=forgetting_quick", "eval.tasks=[alignlab_arc_easy]",
                  "eval.limit=60", "eval.bootstrap_iters=0", "eval.gate=fail", "eval.max_drop={default: 10}")
    with pytest.raises(ForgettingGateError, match=r"node 'sft' forgot on alignlab_arc_easy: acc 0\.\d{4} -> 0\.\d{4} "
                                                  r"\(-\d+\.\d\d points, 95% CI \[-\d+\.\d\d, -\d+\.\d\d\], n=60; "
                                                  r"max drop 10\)"):
        run(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["nodes"]["sft"]["status"] == "trained"
    assert "ForgettingGateError: node 'sft' forgot on alignlab_arc_easy" in summary["error"]
    [row] = summary["forgetting"]["nodes"]["sft"]["deltas"]
    assert row["vs_base"]["delta"] < -10 and row["vs_base"]["hi"] < 0 and row["vs_base"]["n"] == 60
    [violation] = summary["forgetting"]["violations"]
    assert (violation["node"], violation["task"], violation["delta"]) == ("sft", "alignlab_arc_easy", row["vs_base"]["delta"])
