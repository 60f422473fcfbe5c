"""Config validation at compose time and pipeline planning."""
from __future__ import annotations

import sys
from pathlib import Path

import subprocess

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from alignlab.errors import ConfigError
from alignlab.preflight import plan

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")  # the console script of this venv


def test_default_composes_to_quickstart(compose):
    cfg = compose()
    assert cfg.name == "quickstart"
    assert list(cfg.pipeline.nodes) == ["sft", "rm", "dpo", "ppo"]
    assert cfg.model.name_or_path == "embedded:smollm2-135m-instruct"
    assert cfg.data.sft.exclude.dataset == ["vicuna"]


def _chain(err: BaseException) -> str:
    text = []
    while err is not None:
        text.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(text)


def test_unknown_key_rejected_with_its_name(compose):
    with pytest.raises(ConfigCompositionException) as info:
        compose("stage.sft.lerning_rate=1")
    assert "Key 'lerning_rate' not in 'SFTStageConfig'" in _chain(info.value)


def test_wrong_type_rejected_with_its_name(compose):
    with pytest.raises(ConfigCompositionException) as info:
        compose("stage.sft.learning_rate=fast")
    assert "full_key: stage.sft.learning_rate" in _chain(info.value)


def test_unknown_key_in_a_group_file_rejected(compose, tmp_path):
    extra = tmp_path / "extra_conf"
    (extra / "data").mkdir(parents=True)
    (extra / "data" / "typo.yaml").write_text("source: alpaca_eval_gpt4\nmax_trian_rows: 10\n")
    with pytest.raises(ConfigCompositionException) as info:
        compose(f"hydra.searchpath=[file://{extra}]", "data@data.sft=typo")
    assert "max_trian_rows" in _chain(info.value)


def test_cli_rejects_typo_and_prints_composed_config():
    bad = subprocess.run([ALIGNLAB, "stage.sft.lerning_rate=1", "--cfg", "job"], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "lerning_rate" in bad.stderr + bad.stdout
    ok = subprocess.run([ALIGNLAB, "--cfg", "job"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "name: quickstart" in ok.stdout and "learning_rate" in ok.stdout


def _nodes(**nodes):
    return OmegaConf.create(nodes)


def test_plan_orders_upstream_first():
    nodes = _nodes(later={"stage": "sft", "init": "first"}, first={"stage": "sft"})
    assert plan(nodes) == ["first", "later"]


def test_plan_rejects_unknown_upstream_unknown_stage_and_cycles(compose):
    with pytest.raises(ConfigError, match=r"pipeline.nodes.b.init: unknown upstream node 'ghost'"):
        plan(_nodes(b={"stage": "sft", "init": "ghost"}))
    with pytest.raises(ConfigError, match="cycle: a -> b -> a"):
        plan(_nodes(a={"stage": "sft", "init": "b"}, b={"stage": "sft", "init": "a"}))
    with pytest.raises(ConfigError, match="a sft node takes no 'policy' upstream"):
        plan(_nodes(a={"stage": "sft"}, b={"stage": "sft", "policy": "a"}))
    with pytest.raises(ConfigError, match="'a' is a dpo node; a reward init must be one of: sft"):
        plan(_nodes(a={"stage": "dpo"}, b={"stage": "reward", "init": "a"}))
    with pytest.raises(ConfigError, match="unknown stage 'rlhf'"):
        plan(compose("pipeline.nodes.sft.stage=rlhf").pipeline.nodes)
