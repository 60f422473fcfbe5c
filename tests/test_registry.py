"""The stage registry and per-node settings: variants of one stage in one DAG, a method added by one
module, library versions in the cache key, and `alignlab cache list|gc`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import open_dict

from alignlab.config import NodeConfig
from alignlab.grid import write_grid_summary
from alignlab.pipeline import run as run_pipeline
from alignlab.report import write_report
from alignlab.stages import REGISTRY, StageSpec, register
from conftest import TINY_PREFERENCE, TINY_SFT, alignlab_env

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
BETAS = (*TINY_SFT, *TINY_PREFERENCE, "pipeline=dpo_betas", "stage.dpo.max_steps=2")


def test_dpo_variants_train_with_their_own_beta_on_one_sft_node(compose, tmp_path):
    cache = tmp_path / "cache"
    first = run_pipeline(compose(*BETAS, run_dir=tmp_path / "r1", cache_dir=cache)).nodes
    variants = {"dpo_b005": 0.05, "dpo_b01": 0.1, "dpo_b05": 0.5}
    assert len({first[n].key for n in variants}) == 3
    for name, beta in variants.items():
        assert first[name].status == "trained" and first[name].upstream == {"policy": "sft"}
        assert first[name].hparams["beta"] == beta
        config = json.loads((Path(first[name].artifact) / "config.json").read_text())
        assert config["hparams"]["beta"] == beta and config["libraries"]["trl"]
    assert first["sft"].status == "trained"
    again = run_pipeline(compose(*BETAS, run_dir=tmp_path / "r2", cache_dir=cache)).nodes
    assert all(node.cache_hit for node in again.values())


ROUNDS = (*TINY_SFT, *TINY_PREFERENCE, "pipeline=iterative_dpo", "stage.dpo.max_steps=2")


def test_iterative_dpo_continues_round_one_on_a_disjoint_shard(compose, tmp_path):
    from alignlab.data import load_data
    from alignlab.data.selection import prompt_key
    from alignlab.preflight import preflight

    cfg = compose(*ROUNDS)
    checked = preflight(cfg)
    r1, r2 = ({prompt_key(row) for row in checked.data[n].train} for n in ("dpo_r1", "dpo_r2"))
    assert r1 and r2 and not r1 & r2
    nodes = run_pipeline(cfg).nodes
    assert nodes["dpo_r1"].upstream == {"policy": "sft"} and nodes["dpo_r2"].upstream == {"policy": "dpo_r1"}
    config = json.loads((Path(nodes["dpo_r2"].artifact) / "config.json").read_text())
    assert config["upstream"]["policy"]["key"] == nodes["dpo_r1"].key
    whole = load_data(cfg.data.preference, "preference", data_home=cfg.paths.data_home)
    for name, index in (("dpo_r1", 1), ("dpo_r2", 2)):
        data = nodes[name].data
        assert (data.shard.index, data.shard.count) == (index, 2) and data.train == len(checked.data[name].train)
        assert sum(data.shard.rows) == whole.report["train"] + whole.report["truncated"]["train"]
        assert data.train_overlap == 0 and data.overlap == 0 and data.eval == whole.report["eval"]


@pytest.mark.parametrize("spec", ["3/2", "0/2", "half"])
def test_a_bad_shard_names_its_key(compose, spec):
    from alignlab.errors import ConfigError
    from alignlab.preflight import preflight

    with pytest.raises(ConfigError, match=rf"pipeline.nodes.dpo_r2.shard: '{spec}' is not 'i/n' with 1 <= i <= n"):
        preflight(compose(*ROUNDS, f"pipeline.nodes.dpo_r2.shard={spec}"))


def test_node_settings_are_checked_against_the_stage_schema(compose):
    from alignlab.errors import ConfigError
    from alignlab.preflight import preflight

    with pytest.raises(ConfigError, match=r"pipeline.nodes.dpo_b05.hparams.betta: Key 'betta' not in 'DPOStageConfig'"):
        preflight(compose(*BETAS, "+pipeline.nodes.dpo_b05.hparams.betta=0.5"))
    with pytest.raises(ConfigError, match=r"pipeline.nodes.dpo_b05.hparams.beta: -0.5 is out of range; it must be > 0"):
        preflight(compose(*BETAS, "pipeline.nodes.dpo_b05.hparams.beta=-0.5"))


def test_library_versions_are_part_of_the_key(compose, monkeypatch):
    from alignlab import node_store
    from alignlab.preflight import preflight

    cfg = compose(*TINY_SFT)
    checked = preflight(cfg)
    key = node_store.node_key(cfg, "sft", checked.hparams["sft"], "data", {})
    installed = node_store.library_versions()
    monkeypatch.setattr(node_store, "library_versions", lambda: {**installed, "trl": "999.0"})
    assert node_store.node_key(cfg, "sft", checked.hparams["sft"], "data", {}) != key


# --- a method registered by this module alone -----------------------------------------------------

@dataclass
class CopyConfig:
    """Settings of the test-only `copy` stage."""

    note: str = "a copy"


def run(ctx):
    """The recipe (this module is the `copy` stage's recipe module): the `init` adapter, copied."""
    shutil.copytree(ctx.upstream["init"].adapter_dir, ctx.output_model_dir)
    return {"copied_files": len(list(ctx.output_model_dir.iterdir()))}


@pytest.fixture
def copy_stage():
    register(StageSpec(kind="copy", recipe=__name__, config=CopyConfig, data_kind="sft", default_data="sft",
                       upstream={"init": ("sft",)}, generative=False, headline=("copied_files",)))
    yield
    del REGISTRY["copy"]


def test_a_stage_registered_in_a_test_module_runs_reports_and_summarises(copy_stage, compose, tmp_path):
    cfg = compose(*TINY_SFT)
    with open_dict(cfg):
        cfg.pipeline.nodes["copy"] = NodeConfig(stage="copy", init="sft")
    record = run_pipeline(cfg)
    node = record.nodes["copy"]
    assert node.status == "trained" and node.metrics["copied_files"] >= 2
    assert (Path(node.artifact) / "adapter" / "adapter_model.safetensors").is_file()
    paths = write_report(record, tmp_path / "report")
    assert "| copy | copy | trained |" in paths["report.md"].read_text()
    # the grid summary of a sweep holding this run: the copy stage's headline metric is a column
    job = tmp_path / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("[seed=1]")
    shutil.copy(Path(record.run_dir) / "summary.json", job / "summary.json")
    [row] = write_grid_summary(tmp_path / "sweep")
    assert row["copy/status"] == "trained" and row["copy/copied_files"] == node.metrics["copied_files"]
    assert "copy/copied_files" in (tmp_path / "sweep" / "grid_summary.csv").read_text().splitlines()[0]


def test_cache_list_and_gc(compose, data_home, model_cache, tmp_path):
    cache = tmp_path / "cache"
    run_pipeline(compose(*TINY_SFT, cache_dir=cache))
    unfinished = cache / "sft-0123456789abcdef.partial"
    unfinished.mkdir()
    env = alignlab_env(data_home, model_cache)
    listed = subprocess.run([ALIGNLAB, "cache", "--dir", str(cache), "list"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and "node sft" in listed.stdout and "2 entries" in listed.stdout
    gc = subprocess.run([ALIGNLAB, "cache", "--dir", str(cache), "gc", "--stale"], env=env, capture_output=True, text=True)
    assert gc.returncode == 0 and "removing sft-0123456789abcdef.partial: unfinished" in gc.stdout
    assert not unfinished.exists() and len(list(cache.glob("sft-*/COMPLETE"))) == 1  # current versions: kept
    config = next(cache.glob("sft-*/config.json"))
    config.write_text(json.dumps({**json.loads(config.read_text()), "libraries": {"trl": "0.1"}}))
    subprocess.run([ALIGNLAB, "cache", "--dir", str(cache), "gc", "--stale"], env=env, check=True, capture_output=True)
    assert not list(cache.glob("sft-*"))
    damaged = cache / "sft-fedcba9876543210"
    damaged.mkdir()
    (damaged / "COMPLETE").write_text("{not json")
    bad = subprocess.run([ALIGNLAB, "cache", "--dir", str(cache), "list"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and f"{damaged / 'COMPLETE'} is not valid JSON" in bad.stderr
    assert "Traceback" not in bad.stderr and damaged.is_dir()  # nothing removed


def test_headline_columns_of_every_kind_in_a_pipeline_from_a_generator():
    from alignlab.stages import REGISTRY, headline

    kinds = ["sft", "dpo", "ppo"]
    expected = tuple(dict.fromkeys(m for k in REGISTRY if k in kinds for m in REGISTRY[k].headline))
    assert headline(k for k in kinds) == expected
    assert set(REGISTRY["ppo"].headline) <= set(expected) and set(REGISTRY["dpo"].headline) <= set(expected)
