"""Paper configs in experiments/paper: each full config states where every method hyperparameter
comes from and declares every deviation from it (alignlab/provenance.py), composes with hub models
and hub data, and its CPU mini sibling changes only scale, model, data and adapter, the way that
keeps the method; the README's paper tables are rendered from the configs; and every mini runs end
to end through the `alignlab` CLI (marked `experiments`: `make test-experiments`)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from alignlab.provenance import OPERATIONAL, Deviation, covering, leaves, mini_problems, render_markdown, stale_deviations, undeclared_mismatches
from alignlab.report import FRONTIER_PLOT
from alignlab.stages import REGISTRY
from conftest import REPO, alignlab_env

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
PAPERS = sorted(p.stem for p in (REPO / "experiments" / "paper").glob("*.yaml") if not p.stem.endswith("_mini"))


def _set_keys(paper: str) -> set:
    """Method keys the experiment file itself sets (stage, peft, quant groups)."""
    raw = OmegaConf.to_container(OmegaConf.load(REPO / "experiments" / "paper" / f"{paper}.yaml"))
    method = {"stage": raw.get("stage", {}), "peft": raw.get("peft", {}), "quant": raw.get("quant", {})}
    return {k for k, _ in leaves(method) if k.split(".")[2 if k.startswith("stage.") else 1] not in OPERATIONAL}


def test_every_paper_has_a_mini():
    assert PAPERS
    for paper in PAPERS:
        assert (REPO / "experiments" / "paper" / f"{paper}_mini.yaml").is_file(), paper


@pytest.mark.parametrize("paper", PAPERS)
def test_paper_config_holds_its_sources_values_or_declares_why_not(compose, paper):
    full = compose(f"experiment=paper/{paper}")
    assert full.paper.citation and full.paper.sourced, paper
    assert undeclared_mismatches(full) == []
    assert stale_deviations(full) == []
    unsourced = {k for k in _set_keys(paper) if k not in full.paper.sourced and covering(k, full.paper.deviations) is None}
    assert not unsourced, f"{paper}: set without a source or a deviation: {sorted(unsourced)}"
    # Full scale: hub model and hub datasets.
    assert not full.model.name_or_path.startswith("embedded:")
    assert full.model.chat_template or full.model.name_or_path.endswith("-instruct")  # instruct models ship theirs
    for node in full.pipeline.nodes.values():
        data = node.data or REGISTRY[node.stage].default_data
        assert full.data[data].source.startswith("hub:"), (paper, data)


@pytest.mark.parametrize("paper", PAPERS)
def test_mini_changes_scale_model_data_and_adapter_only(compose, paper):
    full, mini = compose(f"experiment=paper/{paper}"), compose(f"experiment=paper/{paper}_mini")
    assert mini_problems(full, mini) == []
    assert undeclared_mismatches(mini) == []
    assert mini.model.name_or_path.startswith("embedded:") and mini.model.chat_template is None
    assert not any(mini.data[d].source.startswith("hub:") for d in mini.data if d in full.data)


def test_mini_rule_catches_what_changes_the_method(compose):
    full, mini = compose("experiment=paper/instructgpt"), compose("experiment=paper/instructgpt_mini")
    OmegaConf.update(mini, "stage.ppo.kl_coef", 0.1)
    OmegaConf.update(mini, "stage.ppo.mini_batch_size", 2)
    OmegaConf.update(mini, "stage.reward.learning_rate", 3e-5)
    OmegaConf.update(mini, "stage.sft.warmup_steps", 5)
    with open_dict(mini):
        mini.paper.deviations["stage.reward.learning_rate"] = Deviation(kind="adapter", reason="a made-up rule")
        mini.paper.deviations["stage.sft.warmup_steps"] = Deviation(kind="scale", reason="fewer steps")
    problems = "\n".join(mini_problems(full, mini))
    assert "stage.ppo.kl_coef: 0.02 -> 0.1 in the mini without a declared deviation" in problems
    assert "stage.ppo: the mini takes 4 minibatches per rollout, the paper 8" in problems
    assert "stage.reward.learning_rate: a mini changes a learning rate only as LoRA's rule, 10 x 9e-05" in problems
    assert "stage.sft.warmup_steps: a mini's warmup is a fraction of its training (< 1), not 5 steps" in problems
    OmegaConf.update(full, "stage.ppo.kl_coef", 0.5)
    assert any(p.startswith("stage.ppo.kl_coef: 0.5 but") for p in undeclared_mismatches(full))


def test_readme_paper_tables_are_rendered_from_the_configs(compose):
    spec = importlib.util.spec_from_file_location("render_papers", REPO / "scripts" / "render_papers.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    body = render_markdown({paper: compose(f"experiment=paper/{paper}") for paper in PAPERS})
    readme = (REPO / "README.md").read_text()
    assert script.replace_section(readme, body) == readme, "run `python scripts/render_papers.py`"


@pytest.mark.experiments
@pytest.mark.parametrize("paper", PAPERS)
def test_mini_variant_runs(paper, compose, data_home, model_cache, tmp_path):
    cfg = compose(f"experiment=paper/{paper}_mini")
    run_dir = tmp_path / "run"
    cmd = [ALIGNLAB, f"experiment=paper/{paper}_mini", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["paper"]["departures"] == [] and summary["paper"]["deviations"]
    assert f"Reproduces {cfg.paper.citation}" in (run_dir / "report.md").read_text()
    for name, node in summary["nodes"].items():
        assert node["status"] == "trained", name
        assert (Path(node["artifact"]) / "COMPLETE").is_file()
        metrics = node["metrics"]
        if node["stage"] == "ppo":
            assert metrics["iterations"] == cfg.stage.ppo.iterations
            assert metrics["episodes"] == cfg.stage.ppo.iterations * cfg.stage.ppo.rollout_batch_size
        else:
            assert metrics["train_steps"] == cfg.stage[node["stage"]].max_steps, name
    if cfg.eval.reward_kl.enabled:  # paper/dpo_frontier: every generative node placed on the frontier
        generative = [n for n, node in summary["nodes"].items() if REGISTRY[node["stage"]].generative]
        frontier = summary["reward_kl"]["nodes"]
        assert list(frontier) == ["base", *generative] and frontier["base"]["kl"] == 0.0
        assert all(p["n"] == cfg.eval.reward_kl.prompts * cfg.eval.reward_kl.n for p in frontier.values())
        assert (run_dir / "plots" / FRONTIER_PLOT).is_file()


@pytest.mark.slow  # ~10 min on 2 quiet cores: kept out of CI's experiments job until that job has room
def test_method_zoo_mini_compares_every_method_in_one_report(compose, data_home, model_cache, tmp_path):
    cfg = compose("experiment=method_zoo_mini")
    run_dir = tmp_path / "run"
    cmd = [ALIGNLAB, "experiment=method_zoo_mini", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    nodes = summary["nodes"]
    assert {node["stage"] for node in nodes.values()} == {"sft", "reward", "dpo", "kto", "simpo", "orpo", "grpo", "ppo"}
    assert all(node["status"] == "trained" for node in nodes.values())
    generative = [name for name, node in nodes.items() if REGISTRY[node["stage"]].generative]
    assert set(summary["forgetting"]["nodes"]) == set(generative)
    judged = {tuple(key.split(":")) for key in summary["judge"]["comparisons"]}
    methods = [name for name in generative if name != "sft"]
    for name in methods:  # each method against its parent...
        assert (name, nodes[name]["upstream"].get("policy", "base")) in judged, name
    for i, a in enumerate(methods):  # ...and against every other method
        for b in methods[i + 1:]:
            assert (a, b) in judged or (b, a) in judged, (a, b)
    report = (run_dir / "report.md").read_text()
    assert all(name in report for name in nodes)
    assert cfg.pipeline.name == "method_zoo"
