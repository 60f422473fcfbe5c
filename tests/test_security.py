"""Security defaults: API keys live only in the environment (never in configs, W&B files, logs,
reports or artifacts), remote code runs only when the config allows it, and weights are written
and read as safetensors (no pickle loading)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from conftest import REPO, TINY_SFT, alignlab_env

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
PLANTED = {"WANDB_API_KEY": "planted0wandb0key0000000000000000000000000",
           "OPENAI_API_KEY": "sk-planted-openai-key-0123456789abcdef", "HF_TOKEN": "hf_plantedHubToken0123456789"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def test_planted_keys_reach_no_output_and_artifacts_are_safetensors(data_home, model_cache, tmp_path):
    env = {**alignlab_env(data_home, model_cache), **PLANTED, "WANDB_DIR": str(tmp_path / "wandb")}
    cmd = [ALIGNLAB, *TINY_SFT, "stage.sft.max_steps=2", "logger=wandb", f"paths.cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "summary.json" for p in files)
    assert any(p.name == "config.yaml" for p in files)  # Hydra's saved config is among the searched files
    for value in PLANTED.values():
        assert value not in done.stdout + done.stderr
        leaked = [p for p in files if value.encode() in p.read_bytes()]
        assert not leaked, leaked
    artifacts = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and ".partial" not in str(p)]
    assert any(p.suffix == ".safetensors" for p in artifacts)
    assert not [p for p in artifacts if p.suffix in PICKLE_SUFFIXES]


def test_api_keys_cannot_be_configured(compose):
    with pytest.raises(ConfigCompositionException):
        compose("judge=openai", "judge.openai.api_key=sk-in-a-config")
    assert compose("judge=openai").judge.openai.api_key_env == "OPENAI_API_KEY"  # the variable's name only


def test_remote_code_runs_only_when_the_config_allows_it(model_cache, tmp_path):
    """A checkpoint whose config maps to custom code: loaded as the native class by default, the
    custom module never imported; with model.trust_remote_code=true it is (the switch works)."""
    import json
    import shutil

    from alignlab.models import ModelConfig, QuantConfig, load_base, resolve_model_path

    model = tmp_path / "model"
    shutil.copytree(resolve_model_path(ModelConfig(name_or_path="embedded:tiny-llama"), model_cache), model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"}
    (model / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "custom-code-ran"
    (model / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'llama'\n"
        "class CustomModel(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    loaded = load_base(ModelConfig(name_or_path=str(model)), QuantConfig(), model_cache)
    assert type(loaded).__name__ == "LlamaForCausalLM" and not marker.exists()
    trusted = load_base(ModelConfig(name_or_path=str(model), trust_remote_code=True), QuantConfig(), model_cache)
    assert type(trusted).__name__ == "CustomModel" and marker.exists()


def test_every_torch_load_in_alignlab_is_weights_only():
    calls = [(p, line) for p in (REPO / "alignlab").rglob("*.py") for line in p.read_text().splitlines()
             if "torch.load(" in line]
    assert calls and all("weights_only=True" in line for _, line in calls), calls
    assert not [p for p in (REPO / "alignlab").rglob("*.py") if re.search(r"^\s*import pickle|pickle\.load", p.read_text(), re.M)]
