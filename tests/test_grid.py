"""Hydra multirun over a whole pipeline: a 3-point DPO beta grid trains the shared SFT node once,
and the grid summary lists every point; a failing job is listed with its error; the same holds
with parallel jobs (joblib launcher), submitit's launcher and an Optuna sweep."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY_PREFERENCE, TINY_SFT, alignlab_env

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
GRID = (*TINY_SFT, *TINY_PREFERENCE, "pipeline=sft_dpo", "stage.sft.max_steps=2", "stage.dpo.max_steps=2")


def _multirun(tmp_path, data_home, model_cache, *overrides):
    sweep = tmp_path / "sweep"
    cmd = [ALIGNLAB, "-m", *GRID, f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}", *overrides]
    done = subprocess.run(cmd, env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=900)
    rows = list(csv.DictReader((sweep / "grid_summary.csv").open())) if (sweep / "grid_summary.csv").is_file() else []
    return done, sweep, rows


def test_beta_grid_shares_the_sft_node(data_home, model_cache, tmp_path):
    done, sweep, rows = _multirun(tmp_path, data_home, model_cache, "stage.dpo.beta=0.05,0.1,0.3",
                                  "hydra.callbacks.grid_summary.metric=dpo/eval_rewards/accuracies",
                                  "hydra.callbacks.grid_summary.key=stage.dpo.beta")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["overrides"].split()[-1] for r in rows] == ["stage.dpo.beta=0.05", "stage.dpo.beta=0.1", "stage.dpo.beta=0.3"]
    assert sorted(r["sft/status"] for r in rows) == ["cached", "cached", "trained"]  # SFT trained exactly once
    assert [r["dpo/status"] for r in rows] == ["trained"] * 3 and all(r["status"] == "ok" for r in rows)
    assert all(r["dpo/eval_rewards/accuracies"] for r in rows)
    assert len(list((tmp_path / "cache").glob("sft-*[0-9a-f]"))) == 1
    assert len(list((tmp_path / "cache").glob("dpo-*[0-9a-f]"))) == 3
    md = (sweep / "grid_summary.md").read_text()
    assert "3 job(s), 0 failed." in md and (sweep / "grid_summary.png").is_file() and (sweep / "grid_summary.html").is_file()


def test_failing_job_is_listed_and_the_others_finish(data_home, model_cache, tmp_path):
    done, sweep, rows = _multirun(tmp_path, data_home, model_cache, "data.preference.max_chars=600,5")
    assert done.returncode != 0
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "no rows left after max_chars=5" in rows[1]["error"]
    assert "## Failed jobs" in (sweep / "grid_summary.md").read_text()


def test_parallel_jobs_train_the_shared_node_once(data_home, model_cache, tmp_path):
    """hydra/launcher=local_parallel (joblib, 2 processes): both jobs need the same SFT node; one
    trains it under its file lock while the other waits, then takes it from the cache."""
    done, sweep, rows = _multirun(tmp_path, data_home, model_cache, "hydra/launcher=local_parallel",
                                  "stage.dpo.beta=0.1,0.3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(r["sft/status"] for r in rows) == ["cached", "trained"]
    assert [r["dpo/status"] for r in rows] == ["trained", "trained"]
    assert len(list((tmp_path / "cache").glob("sft-*[0-9a-f]"))) == 1


def test_submitit_launcher_runs_the_grid(data_home, model_cache, tmp_path):
    """hydra/launcher=submitit_local: the submitit path the SLURM config (hydra/launcher=slurm)
    takes, with jobs as local processes."""
    done, sweep, rows = _multirun(tmp_path, data_home, model_cache, "hydra/launcher=submitit_local",
                                  "hydra.launcher.timeout_min=15", "pipeline=sft", "seed=1,2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["status"] for r in rows] == ["ok", "ok"] and [r["sft/status"] for r in rows] == ["trained"] * 2
    assert list((sweep / ".submitit").iterdir())


def test_optuna_sweep_maximises_the_objective(data_home, model_cache, tmp_path):
    """experiment=grid/dpo_beta_optuna on the tiny model: two TPE trials over beta, each returning
    its DPO reward accuracy; Optuna's best trial is the grid summary's best row."""
    done, sweep, rows = _multirun(tmp_path, data_home, model_cache, "experiment=grid/dpo_beta_optuna",
                                  "hydra.sweeper.n_trials=2", "eval=none")
    assert done.returncode == 0, done.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    accuracies = [float(r["dpo/eval_rewards/accuracies"]) for r in rows]
    assert len(rows) == 2 and result["best_value"] == pytest.approx(max(accuracies), abs=1e-4)
    assert 0.01 <= result["best_params"]["stage.dpo.beta"] <= 1.0
    assert sorted(r["sft/status"] for r in rows) == ["cached", "trained"]


def test_objective_value_reads_a_summary_column():
    from types import SimpleNamespace

    from alignlab.errors import ConfigError
    from alignlab.grid import objective_value
    from alignlab.record import Violation, load

    record = load(Path(__file__).parent / "data" / "summary_v1.json")  # a real run's: sft -> dpo, judged
    record.nodes["dpo"].metrics["eval_rewards/accuracies"] = 0.75
    objective = SimpleNamespace(metric="dpo/eval_rewards/accuracies", gate_fail_value=0.0)
    assert objective_value(objective, record) == 0.75
    record.forgetting.violations = [Violation(node="dpo", task="alignlab_piqa", metric="acc", before=0.5, after=0.25,
                                              delta=-25.0, lo=-40.0, hi=-10.0, n=4, confidence=0.95, max_drop=5)]
    assert objective_value(objective, record) == 0.0  # the forgetting gate failed
    assert objective_value(SimpleNamespace(metric=None, gate_fail_value=None), record) is None
    with pytest.raises(ConfigError, match=r"objective.metric 'dpo/nope' is not a number .* numeric columns: "
                                          r".*dpo/eval_rewards/accuracies, .*forgetting/violations"):
        objective_value(SimpleNamespace(metric="dpo/nope", gate_fail_value=None), record)
