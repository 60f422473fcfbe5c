"""Hydra multirun over a whole pipeline: a 3-point DPO beta grid trains the shared SFT node once,
and the grid summary lists every point; a failing job is listed with its error."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

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
