"""Pipeline runner: content-addressed cache, completion marker, summary.json (resume: test_faults.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.eval import ForgettingGateError
from alignlab.pipeline import COMPLETE, run
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
    node = section["nodes"]["sft"]
    row = next(r for r in node["deltas"] if r["metric"] == "acc")
    assert row["vs_base"] == pytest.approx(100 * (row["node"] - row["base"]))
    assert list((tmp_path / "cache" / "forgetting").glob("*.json"))  # lm-eval results JSON, cached


def test_forgetting_gate_fails_the_pipeline_naming_node_and_task(compose, tmp_path):
    # max_drop -100 points: any score counts as a drop beyond the limit (a synthetic regression)
    cfg = compose(*TINY_SFT, *TINY_EVAL, "stage.sft.max_steps=2", "eval.gate=fail", "eval.max_drop={default: -100}")
    with pytest.raises(ForgettingGateError, match=r"node 'sft' forgot on alignlab_piqa: acc"):
        run(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["nodes"]["sft"]["status"] == "trained"
    assert summary["forgetting"]["nodes"]["sft"]["scores"]["alignlab_piqa"]
