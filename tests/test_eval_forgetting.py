"""Forgetting checks: bundled lm-eval tasks on the mirror, evaluate_model vs the lm_eval CLI, paired
deltas and the gate (hand-computed), and the gate on real models: an identical node and a damaged one."""
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
    primary_metrics,
)
from alignlab.eval.forgetting import _write_mmlu_subset
from alignlab.stats import PairedDelta, paired_delta_ci

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
    results = evaluate_model(model, load_tokenizer(tiny, model_cache), cfg, data_home, out)
    return results, out, model


def test_evaluate_model_returns_accuracies_and_writes_lm_eval_json(tiny_run):
    results, out, model = tiny_run
    scores = compact_scores(results)
    assert sorted(scores) == sorted(QUICK_TASKS)
    assert "acc_norm" in scores["alignlab_arc_easy"] and "acc_norm" not in scores["alignlab_winogrande"]
    for metrics in scores.values():
        for metric in [m for m in metrics if not m.endswith("_stderr")]:
            assert 0.0 <= metrics[metric] <= 1.0
            assert metrics[f"{metric}_stderr"] >= 0.0
    saved = json.loads(out.read_text())
    assert saved == results
    assert saved["n-samples"]["alignlab_piqa"] == {"original": 1838, "effective": 4}
    assert saved["config"]["fewshot_seed"] == SEED
    items = saved["samples"]["alignlab_arc_easy"]  # per-item scores only, in lm-eval's order
    assert [i["doc_id"] for i in items] == [0, 1, 2, 3] and set(items[0]) == {"doc_id", "filter", "acc", "acc_norm"}
    assert sum(i["acc"] for i in items) / 4 == scores["alignlab_arc_easy"]["acc"]
    assert model.training  # left in the mode it came in


def test_scores_equal_the_lm_eval_command_line(tiny_run, data_home, model_cache, tmp_path):
    scores = compact_scores(tiny_run[0])
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


# --- paired deltas and the gate (hand-computed) -----------------------------------------------

def test_paired_delta_ci_by_hand():
    z = 1.959963984540054  # two-sided 95% normal quantile
    # differences in points -100, 0, 0, 0: mean -25, sample sd 50, se 50 / sqrt(4) = 25
    d = paired_delta_ci([1, 1, 1, 0], [0, 1, 1, 0])
    assert (d.delta, d.se, d.n) == (-25.0, 25.0, 4)
    assert d.lo == pytest.approx(-25 - z * 25) and d.hi == pytest.approx(-25 + z * 25) and not d.excludes_zero()
    assert paired_delta_ci([1, 1, 1, 0], [0, 1, 1, 0], confidence=0.5).hi == pytest.approx(-25 + 0.6744897501960817 * 25)
    same = paired_delta_ci([1, 0, 1], [1, 0, 1])
    assert (same.delta, same.se, same.lo, same.hi) == (0.0, 0.0, 0.0, 0.0) and not same.excludes_zero()
    assert paired_delta_ci([0.5], [0.25]) == PairedDelta(-25.0, None, None, None, 1)
    with pytest.raises(ValueError, match="same items"):
        paired_delta_ci([1, 0], [1])


def _results(items: dict, groups: dict | None = None, metric: str = "acc", higher: bool = True) -> dict:
    """lm-eval results JSON with per-item scores: `items` {task: [score per doc]}; a group's score is
    the mean over its tasks' items (lm-eval's size-weighted aggregate)."""
    groups = groups or {}
    per_task = {task: [float(v) for v in values] for task, values in items.items()}
    for group, tasks in groups.items():
        per_task[group] = [v for task in tasks for v in per_task[task]]
    return {
        "results": {task: {"alias": task, f"{metric},none": sum(v) / len(v), f"{metric}_stderr,none": "N/A"}
                    for task, v in per_task.items()},
        "group_subtasks": groups,
        "higher_is_better": {task: {metric: higher} for task in per_task},
        "samples": {task: [{"doc_id": i, "filter": "none", metric: v} for i, v in enumerate(values)]
                    for task, values in items.items()},
    }


def _gate(base, node, max_drop, mode="fail"):
    return check_gate("sft", deltas(base, node, None, primary_metrics(base)), max_drop, mode)


BASE_ITEMS = [1] * 14 + [0] * 6  # acc 0.70 on 20 items


def test_a_noisy_small_drop_within_the_interval_passes():
    # 3 items lost, 1 gained: -10 points; differences -100 x3, +100, 0 x16: sd sqrt(2000), se 10
    node = [0, 0, 0] + [1] * 11 + [1] + [0] * 5
    rows = deltas(_results({"arc": BASE_ITEMS}), _results({"arc": node}), None, primary_metrics(_results({"arc": BASE_ITEMS})))
    assert rows[0]["vs_base"]["delta"] == pytest.approx(-10.0) and rows[0]["vs_base"]["se"] == pytest.approx(10.0)
    assert rows[0]["vs_base"]["lo"] == pytest.approx(-29.5996398) and rows[0]["vs_base"]["hi"] == pytest.approx(9.5996398)
    assert _gate(_results({"arc": BASE_ITEMS}), _results({"arc": node}), 5.0) == []  # 10 > 5, but the CI holds 0


def test_a_consistent_drop_beyond_the_limit_fails_naming_task_delta_and_interval():
    # 6 items lost: -30 points; differences -100 x6, 0 x14: se sqrt(42000 / 19 / 20) = 10.5131
    base, node = _results({"arc": BASE_ITEMS}), _results({"arc": [0] * 6 + [1] * 8 + [0] * 6})
    assert _gate(base, node, {"default": 30.0}) == []  # a drop at the limit passes
    with pytest.raises(ForgettingGateError) as err:
        _gate(base, node, {"arc": 29.0, "default": 50.0})
    assert isinstance(err.value, AlignlabError)
    assert str(err.value) == ("node 'sft' forgot on arc: acc 0.7000 -> 0.4000 (-30.00 points, 95% CI [-50.61, -9.39], "
                              "n=20; max drop 29)")
    [v] = _gate(base, node, 5.0, mode="warn")
    assert (v["task"], v["delta"], v["n"], v["max_drop"]) == ("arc", -30.0, 20, 5.0)
    assert v["lo"] == pytest.approx(-50.6053947) and v["hi"] == pytest.approx(-9.3946053)
    assert _gate(base, node, {"other": 1.0}) == []  # no limit for arc: not checked


def test_direction_follows_higher_is_better():
    low = [0] * 20
    worse = [1] * 8 + [0] * 12  # a loss-like metric going up by 40 points
    assert _gate(_results({"ppl": worse}, higher=False), _results({"ppl": low}, higher=False), 5.0) == []
    with pytest.raises(ForgettingGateError, match=r"ppl: acc 0\.0000 -> 0\.4000 \(\+40\.00 points"):
        _gate(_results({"ppl": low}, higher=False), _results({"ppl": worse}, higher=False), 5.0)


def test_a_group_is_gated_as_one_score_and_its_subtasks_shown():
    groups = {"mmlu": ["mmlu_anatomy", "mmlu_astronomy"]}
    base = _results({"mmlu_anatomy": [1] * 10, "mmlu_astronomy": [0] * 30}, groups)
    node = _results({"mmlu_anatomy": [0] * 10, "mmlu_astronomy": [1] * 3 + [0] * 27}, groups)
    primary = primary_metrics(base)
    assert primary == {"mmlu": {"metric": "acc", "higher_is_better": True, "gated": True},
                       "mmlu_anatomy": {"metric": "acc", "higher_is_better": True, "gated": False},
                       "mmlu_astronomy": {"metric": "acc", "higher_is_better": True, "gated": False}}
    rows = {r["task"]: r for r in deltas(base, node, None, primary)}
    assert rows["mmlu_anatomy"]["vs_base"]["delta"] == -100.0  # shown, not gated
    assert rows["mmlu"]["vs_base"]["delta"] == pytest.approx(-17.5) and rows["mmlu"]["vs_base"]["n"] == 40
    assert rows["mmlu"]["base"] == 0.25 and rows["mmlu"]["node"] == 0.075
    assert check_gate("sft", list(rows.values()), 20.0, "fail") == []
    with pytest.raises(ForgettingGateError, match=r"forgot on mmlu: acc 0\.2500 -> 0\.0750 \(-17\.50 points"):
        check_gate("sft", list(rows.values()), 10.0, "fail")


def test_parent_deltas_and_the_primary_metric():
    base = _results({"arc": BASE_ITEMS})
    parent, node = _results({"arc": [1] * 20}), _results({"arc": [1] * 10 + [0] * 10})
    [row] = deltas(base, node, parent, primary_metrics(base))
    assert (row["base"], row["parent"], row["node"]) == (0.7, 1.0, 0.5)
    assert row["vs_base"]["delta"] == pytest.approx(-20.0) and row["vs_parent"]["delta"] == -50.0
    assert row["vs_parent"]["n"] == 20

    two = _results({"arc": BASE_ITEMS})
    two["results"]["arc"]["acc_norm,none"] = 0.5
    two["results"]["gsm"] = {"alias": "gsm", "exact_match,strict-match": 0.0, "exact_match,flexible-extract": 0.0}
    assert primary_metrics(two)["arc"]["metric"] == "acc"  # lm-eval's first
    assert primary_metrics(two)["gsm"]["metric"] == "exact_match,strict-match"
    assert primary_metrics(two, {"arc": "acc_norm"})["arc"]["metric"] == "acc_norm"
    with pytest.raises(ConfigError, match=r"eval\.metrics\.arc: no metric 'f1' in lm-eval's results of arc \(have: acc, acc_norm\)"):
        primary_metrics(two, {"arc": "f1"})


def test_items_must_match():
    base = _results({"arc": BASE_ITEMS})
    with pytest.raises(AlignlabError, match=r"arc: the model and its reference were scored on different items \(20 vs 10\)"):
        deltas(base, _results({"arc": BASE_ITEMS[:10]}), None, primary_metrics(base))


def test_gate_rejects_an_unknown_mode():
    base = _results({"arc": BASE_ITEMS})
    with pytest.raises(ConfigError, match="not one of warn, fail"):
        _gate(base, base, 1.0, mode="block")


# --- the gate on a real model: an identical node and a damaged one ------------------------------

SMOL_LIMIT = 60


@pytest.fixture(scope="module")
def smol(data_home, model_cache, tmp_path_factory):
    """SmolLM2-135M-Instruct (well above chance on ARC-Easy, unlike the random tiny model), its
    tokenizer, the eval settings and its lm-eval results on ARC-Easy."""
    from alignlab.models import ModelConfig, QuantConfig, load_base, load_tokenizer

    cfg = ModelConfig(name_or_path="embedded:smollm2-135m-instruct")
    model, tokenizer = load_base(cfg, QuantConfig(), model_cache), load_tokenizer(cfg, model_cache)
    eval_cfg = ForgettingConfig(tasks=["alignlab_arc_easy"], limit=SMOL_LIMIT, batch_size=8, seed=SEED, bootstrap_iters=0)
    base = evaluate_model(model, tokenizer, eval_cfg, data_home, tmp_path_factory.mktemp("smol") / "base.json")
    return model, tokenizer, eval_cfg, base


def _adapter_results(smol, data_home, tmp_path, damage: float | None):
    """Results of the base with a LoRA adapter: peft's identity init (B = 0), or random weights
    with B scaled by `damage`."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, tokenizer, eval_cfg, _ = smol
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=damage is None)
    node = get_peft_model(model, lora, adapter_name="node")
    try:
        with torch.no_grad():
            for name, weight in node.named_parameters():
                if damage is not None and "lora_B" in name:
                    weight.mul_(damage)
        return evaluate_model(node, tokenizer, eval_cfg, data_home, tmp_path / "node.json")
    finally:
        node.unload()


def test_a_node_identical_to_the_base_never_violates(smol, data_home, tmp_path):
    base = smol[3]
    node = _adapter_results(smol, data_home, tmp_path, damage=None)
    [row] = deltas(base, node, base, primary_metrics(base))
    assert 0.3 < row["base"] == row["node"]
    assert row["vs_base"] == {"delta": 0.0, "se": 0.0, "lo": 0.0, "hi": 0.0, "n": SMOL_LIMIT}
    assert check_gate("sft", [row], 0.0, "fail") == []


def test_a_damaged_node_violates_the_gate(smol, data_home, tmp_path):
    base = smol[3]
    node = _adapter_results(smol, data_home, tmp_path, damage=100.0)
    rows = deltas(base, node, None, primary_metrics(base))
    with pytest.raises(ForgettingGateError, match=rf"node 'sft' forgot on alignlab_arc_easy: acc 0\.\d+ -> 0\.\d+ "
                                                  rf"\(-\d+\.\d+ points, 95% CI \[-\d+\.\d+, -\d+\.\d+\], "
                                                  rf"n={SMOL_LIMIT}; max drop 5\)"):
        check_gate("sft", rows, {"default": 5.0}, "fail")
