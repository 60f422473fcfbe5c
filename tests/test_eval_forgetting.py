"""Forgetting checks: bundled lm-eval tasks on the mirror, evaluate_model vs the lm_eval CLI, the gate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignlab.errors import AlignlabError, ConfigError
from alignlab.eval import (
    TASKS_DIR,
    ForgettingConfig,
    ForgettingGateError,
    check_gate,
    compact_scores,
    deltas,
    evaluate_model,
    mmlu_subjects,
)
from alignlab.eval.forgetting import _write_mmlu_subset

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
LM_EVAL = Path(sys.executable).with_name("lm_eval")

# Items each bundled task evaluates, counted on the original files (SOURCES.md).
EVAL_COUNTS = {
    "alignlab_arc_easy": 2376,
    "alignlab_arc_challenge": 1172,
    "alignlab_boolq": 3270,
    "alignlab_piqa": 1838,
    "alignlab_winogrande": 1267,  # 1268 CSV rows, the last a summary row
    "alignlab_hellaswag": 10042,  # 60252 text lines, 6 per item
    "alignlab_openbookqa": 500,
    "alignlab_gsm8k": 1319,
    "alignlab_mmlu_anatomy": 135,
    "alignlab_mmlu_astronomy": 152,
}
QUICK_TASKS = ["alignlab_arc_easy", "alignlab_piqa", "alignlab_winogrande"]  # winogrande: partial scoring
SEED = 1234


def _task_manager(data_home, *extra_paths):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(TASKS_DIR), *map(str, extra_paths)], include_defaults=False,
                       metadata={"data_home": str(data_home)})


@pytest.fixture(scope="module")
def bundled(data_home):
    manager = _task_manager(data_home)
    return manager, manager.load(list(EVAL_COUNTS))["tasks"]


# --- bundled tasks on the mirror ------------------------------------------------------------

@pytest.mark.parametrize("task,count", EVAL_COUNTS.items())
def test_bundled_task_reads_every_mirror_item(bundled, task, count):
    assert len(bundled[1][task].eval_docs) == count


def test_records_take_lm_eval_shapes(bundled):
    tasks = bundled[1]
    arc = tasks["alignlab_arc_easy"].eval_docs[0]
    assert arc["question"].startswith("Which statement best explains why photosynthesis")
    assert tasks["alignlab_arc_easy"].doc_to_target(arc) == 0  # answerKey A
    piqa = tasks["alignlab_piqa"].eval_docs
    assert piqa[:3]["label"] == [0, 1, 1]  # first lines of valid-labels.lst
    assert tasks["alignlab_boolq"].eval_docs[0]["label"] == 0  # "false"
    hellaswag = tasks["alignlab_hellaswag"].eval_docs[0]
    assert hellaswag["query"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert hellaswag["label"] == 3 and len(hellaswag["choices"]) == 4
    wino = tasks["alignlab_winogrande"]
    doc = wino.eval_docs[0]  # "... so _ always got the easier cases.", answer 2
    assert wino.doc_to_text(doc) == 1
    assert wino.doc_to_choice(doc) == ["Sarah was a much better surgeon than Maria so Sarah",
                                       "Sarah was a much better surgeon than Maria so Maria"]
    assert wino.doc_to_target(doc) == "always got the easier cases."
    mmlu = tasks["alignlab_mmlu_anatomy"]
    assert mmlu.eval_docs[0]["answer"] == 0 and len(mmlu.eval_docs[0]["choices"]) == 4
    assert len(mmlu.fewshot_docs()) == 5  # the dev rows


def test_mmlu_group_covers_all_subjects_and_a_subset_can_replace_it(bundled, data_home, tmp_path):
    assert len(mmlu_subjects()) == 57
    assert len(bundled[0].task_index["alignlab_mmlu_subjects"].tags) == 57
    _write_mmlu_subset(["anatomy", "astronomy"], tmp_path)
    loaded = _task_manager(data_home, tmp_path).load(["alignlab_mmlu"])
    assert sorted(loaded["tasks"]) == ["alignlab_mmlu_anatomy", "alignlab_mmlu_astronomy"]
    with pytest.raises(ConfigError, match="unknown MMLU subject"):
        _write_mmlu_subset(["anatomy", "astrology"], tmp_path)


def test_missing_mirror_file_is_a_clear_error(tmp_path):
    with pytest.raises(AlignlabError, match=r"data file .*ARC-Easy-Dev.jsonl is missing from the data home .*alignlab data fetch benchmarks/arc/ARC-Easy-Dev.jsonl"):
        _task_manager(tmp_path).load(["alignlab_arc_easy"])


def test_config_files_compose_against_the_schema(bundled):
    from omegaconf import OmegaConf

    for name in ("forgetting_quick", "forgetting_full"):
        cfg = OmegaConf.merge(OmegaConf.structured(ForgettingConfig), OmegaConf.load(REPO / "conf" / "eval" / f"{name}.yaml"))
        assert set(cfg.tasks) <= set(bundled[0].all_tasks), name
        assert cfg.gate in ("warn", "fail")


# --- evaluate_model on the tiny model, and the lm_eval command line ---------------------------

@pytest.fixture(scope="module")
def tiny_run(data_home, model_cache, tmp_path_factory):
    from alignlab.models import ModelConfig, QuantConfig, load_base, load_tokenizer

    tiny = ModelConfig(name_or_path="embedded:tiny-llama")
    model = load_base(tiny, QuantConfig(), model_cache)
    model.train()
    cfg = ForgettingConfig(tasks=QUICK_TASKS, limit=4, batch_size=4, seed=SEED)
    out = tmp_path_factory.mktemp("forgetting") / "tiny.json"
    scores = evaluate_model(model, load_tokenizer(tiny, model_cache), cfg, data_home, out)
    return scores, out, model


def test_evaluate_model_returns_accuracies_and_writes_lm_eval_json(tiny_run):
    scores, out, model = tiny_run
    assert sorted(scores) == sorted(QUICK_TASKS)
    assert "acc_norm" in scores["alignlab_arc_easy"] and "acc_norm" not in scores["alignlab_winogrande"]
    for metrics in scores.values():
        for metric in [m for m in metrics if not m.endswith("_stderr")]:
            assert 0.0 <= metrics[metric] <= 1.0
            assert metrics[f"{metric}_stderr"] >= 0.0
    saved = json.loads(out.read_text())
    assert compact_scores(saved) == scores
    assert saved["n-samples"]["alignlab_piqa"] == {"original": 1838, "effective": 4}
    assert saved["config"]["fewshot_seed"] == SEED
    assert model.training  # left in the mode it came in


def test_scores_equal_the_lm_eval_command_line(tiny_run, data_home, model_cache, tmp_path):
    scores = tiny_run[0]
    env = dict(os.environ, ALIGNLAB_DATA_HOME=str(data_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [
        str(LM_EVAL), "--model", "hf",
        "--model_args", f"pretrained={Path(model_cache) / 'tiny-llama'},dtype=float32",
        "--include_path", str(TASKS_DIR), "--tasks", ",".join(QUICK_TASKS),
        "--limit", "4", "--batch_size", "4", "--seed", str(SEED), "--device", "cpu",
        "--output_path", str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [result_file] = tmp_path.rglob("results_*.json")
    assert compact_scores(json.loads(result_file.read_text())) == scores


# --- deltas and the gate (hand-computed) ------------------------------------------------------

BASE = {"arc": {"acc": 0.55, "acc_stderr": 0.02, "acc_norm": 0.60}, "piqa": {"acc": 0.70}}
PARENT = {"arc": {"acc": 0.53, "acc_norm": 0.60}, "piqa": {"acc": 0.69}}
NODE = {"arc": {"acc": 0.50, "acc_stderr": 0.02, "acc_norm": 0.61}, "piqa": {"acc": 0.68}}


def test_deltas_are_points_against_base_and_parent():
    rows = {(r["task"], r["metric"]): r for r in deltas(BASE, NODE, PARENT)}
    assert set(rows) == {("arc", "acc"), ("arc", "acc_norm"), ("piqa", "acc")}
    assert rows["arc", "acc"] == {"task": "arc", "metric": "acc", "base": 0.55, "parent": 0.53, "node": 0.50,
                                  "vs_base": -5.0, "vs_parent": -3.0}
    assert rows["arc", "acc_norm"]["vs_base"] == 1.0
    assert rows["piqa", "acc"]["vs_parent"] == -1.0
    assert deltas(BASE, NODE)[0]["parent"] is None and deltas(BASE, NODE)[0]["vs_parent"] is None


def test_gate_passes_a_drop_at_the_limit():
    assert check_gate("dpo", NODE, BASE, 5.0, mode="fail") == []  # arc acc -5.0, piqa -2.0


def test_gate_warns_on_a_drop_beyond_the_limit(caplog):
    violations = check_gate("dpo", NODE, BASE, {"default": 1.0, "arc": 6.0}, mode="warn")
    assert violations == [{"node": "dpo", "task": "piqa", "metric": "acc", "before": 0.70, "after": 0.68,
                           "delta": -2.0, "max_drop": 1.0}]
    assert "node 'dpo' forgot on piqa" in caplog.text


def test_gate_fails_naming_node_task_metric_and_scores():
    with pytest.raises(ForgettingGateError) as err:
        check_gate("sft", NODE, BASE, {"arc": 4.5}, mode="fail")  # piqa: no limit, not checked
    assert isinstance(err.value, AlignlabError)
    assert str(err.value) == "node 'sft' forgot on arc: acc 0.5500 -> 0.5000 (-5.00 points, max drop 4.5)"


def test_gate_rejects_an_unknown_mode():
    with pytest.raises(ConfigError, match="not one of warn, fail"):
        check_gate("sft", NODE, BASE, 1.0, mode="block")
