"""Judge calibration: the labelled reference sets, its statistics by hand, and the standalone
`alignlab judge-calibrate` command (the calibrated pipeline is in test_judge.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alignlab.data import load_data
from alignlab.errors import ConfigError
from alignlab.eval.judge.calibrate import annotation_pairs, human_pairs, measure
from alignlab.eval.judge.verdicts import Judgement
from alignlab.stats import wilson_interval
from conftest import TINY_PREFERENCE, TINY_SFT, alignlab_env

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
ANNOTATIONS = "preference/alpaca_eval/gpt4__alpaca_eval_gpt4__annotations.json"


def test_annotation_pairs_are_balanced_labelled_and_short(data_home):
    raw = {r["instruction"]: r for r in json.loads((data_home / ANNOTATIONS).read_text())}
    pairs = annotation_pairs(6, 2000, seed=1234, data_home=str(data_home))
    labels = []
    for p in pairs:
        r = raw[p["question"]]
        label = r["preference"]  # 1 or 2: ties (0) are never picked
        assert (p["chosen"], p["rejected"]) == (r[f"output_{label}"], r[f"output_{3 - label}"])
        assert len(p["question"]) + len(p["chosen"]) + len(p["rejected"]) <= 2000
        labels.append(label)
    assert labels == [1, 2, 1, 2, 1, 2]
    assert annotation_pairs(6, 2000, seed=1234, data_home=str(data_home)) == pairs  # stable
    # Only 29 pairs within 2000 characters prefer output_1 (davinci003 won 32 of 805).
    with pytest.raises(ConfigError, match=r"judge\.calibration\.pairs=80: .* has only 29 pairs per label"):
        annotation_pairs(80, 2000, seed=1234, data_home=str(data_home))


def test_human_pairs_come_from_the_held_out_split(compose):
    cfg = compose(*TINY_SFT, *TINY_PREFERENCE)
    pairs = human_pairs(cfg, 6, 2000, seed=1234, data_home=cfg.paths.data_home)
    data = load_data(cfg.data.preference, "preference", data_home=cfg.paths.data_home)

    def triple(row):
        return row["prompt"][-1]["content"], row["chosen"][-1]["content"], row["rejected"][-1]["content"]

    held_out, trained = {triple(r) for r in data.eval}, {triple(r) for r in data.train}
    assert len(pairs) == 6
    for p in pairs:
        key = (p["question"].rsplit("Human: ", 1)[-1], p["chosen"], p["rejected"])
        assert key in held_out and key not in trained


def _jobs(*judgements):
    return [{"judgement": Judgement(*j) if j else None} for j in judgements]


def test_measure_hand_computed():
    pairs = [{}] * 4
    jobs = _jobs(
        (0.6, 0.2, 0.2), (0.3, 0.5, 0.2),  # label first, then second: P(label better) 0.6875, agrees
        (0.7, 0.1, 0.2), (0.7, 0.1, 0.2),  # pure position bias: 0.5, half an agreement
        (0.2, 0.6, 0.2), (0.5, 0.3, 0.2),  # 0.3125: disagrees
        None, (1, 0, 0),  # unparseable
    )
    m = measure(pairs, jobs, tie_margin=0.05, confidence=0.95, seed=0)
    assert (m["pairs"], m["n"], m["unparseable"]) == (4, 3, 1)
    assert m["agreement"] == pytest.approx(1.5 / 3)
    assert m["agreement_ci"] == pytest.approx(list(wilson_interval(1.5, 3)))
    # single judgements' share of the label side: 0.75, 0.625 | 0.875, 0.125 | 0.25, 0.375 | -, 0 (label second, A)
    assert m["agreement_one_order"] == pytest.approx(3 / 7)
    assert m["p_label_better"] == pytest.approx((0.6875 + 0.5 + 0.3125) / 3)
    # consistent: the first and the third pair (which leans to the rejected side in both orders)
    assert m["consistency"] == pytest.approx(2 / 3) and m["tie_mass"] == pytest.approx(0.2)
    assert m["informative"] is False
    # 12 of 12 agreeing: Wilson lower bound 12 / (12 + 1.96^2) = 0.757 > 0.5
    sure = measure([{}] * 12, _jobs(*[(0.9, 0.1, 0.0), (0.1, 0.9, 0.0)] * 12), 0.05, 0.95, 0)
    assert sure["agreement"] == 1.0 and sure["agreement_ci"][0] == pytest.approx(0.7575, abs=1e-3)
    assert sure["informative"] is True and sure["consistency"] == 1.0


def test_judge_calibrate_command(data_home, model_cache, tmp_path):
    cmd = [ALIGNLAB, "judge-calibrate", "judge.local.name_or_path=embedded:tiny-llama", "judge.calibration.pairs=4",
           "judge.batch_size=8", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.data_home={data_home}",
           f"paths.model_cache={model_cache}"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=alignlab_env(data_home, model_cache), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = first.stdout.splitlines()
    assert lines[0].startswith("judge local:embedded:tiny-llama")
    assert lines[1].lstrip().startswith("alpaca_eval_gpt4_annotations: 4 pairs, agreement ")
    assert lines[2].lstrip().startswith("human:preference: 4 pairs, agreement ")
    saved = json.loads((tmp_path / "cache" / "judge" / "calibration-latest.json").read_text())
    assert set(saved["sets"]) == {"alpaca_eval_gpt4_annotations", "human:preference"}
    entries = sorted((tmp_path / "cache" / "judge").rglob("*.json"))
    second = subprocess.run(cmd, capture_output=True, text=True, env=alignlab_env(data_home, model_cache), timeout=600)
    assert second.returncode == 0 and second.stdout == first.stdout  # from the cache: nothing judged again
    assert sorted((tmp_path / "cache" / "judge").rglob("*.json")) == entries
    bad = subprocess.run([*cmd, "judge.calibration.pairs=1"], capture_output=True, text=True,
                         env=alignlab_env(data_home, model_cache), timeout=600)
    assert bad.returncode == 1 and "judge.calibration.pairs: 1" in bad.stderr
