"""Integration: the quickstart experiment's SFT node on the embedded SmolLM2, tracked in W&B offline."""
from __future__ import annotations

import sys

import json
import subprocess
from pathlib import Path

from conftest import alignlab_env
from wandb_records import records

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")  # the console script of this venv


def _history_keys(record) -> set:
    return {item.key or "/".join(item.nested_key) for item in record.history.item}


def test_quickstart_sft_node_with_wandb_offline(data_home, model_cache, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        ALIGNLAB,
        "pipeline=sft",
        "stage.sft.max_steps=3",
        "stage.sft.logging_steps=1",
        "data.sft.max_train_rows=24",
        "data.sft.max_eval_rows=4",
        "stage.sft.max_length=256",
        "eval.limit=10",
        "judge.num_prompts=2",
        "judge.max_new_tokens=24",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(cmd, env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["name"] == "quickstart" and summary["status"] == "ok"
    node = summary["nodes"]["sft"]
    assert node["status"] == "trained" and node["metrics"]["train_steps"] == 3
    assert node["data"]["train"] == 24
    assert Path(node["artifact"], "adapter", "adapter_model.safetensors").is_file()
    assert (Path(node["artifact"]) / "metrics.jsonl").is_file()

    forgetting = summary["forgetting"]
    assert set(forgetting["base"]) == set(forgetting["tasks"]) == set(forgetting["nodes"]["sft"]["scores"])
    assert all(0.0 <= s["acc"] <= 1.0 for s in forgetting["base"].values())

    judge = summary["judge"]["comparisons"]["sft:base"]
    assert judge["n"] + judge["unparseable"] == 2
    report = (run_dir / "report.md").read_text()
    assert "## Forgetting checks" in report and "sft vs base" in report

    runs = {}
    for path in run_dir.glob("wandb/offline-run-*/run-*.wandb"):
        recs = list(records(path))
        run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
        runs[run.job_type] = (run, recs)
    assert set(runs) == {"sft", "compare"}  # one run per node plus the experiment's compare run
    run, recs = runs["sft"]
    assert (run.run_group, run.job_type, run.display_name) == ("quickstart", "sft", "sft")
    logged = set().union(*(_history_keys(r) for r in recs if r.WhichOneof("record_type") == "history"))
    assert "loss" in logged and "eval_loss" in logged
    compare, _ = runs["compare"]
    assert compare.run_group == "quickstart"
