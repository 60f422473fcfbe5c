"""The root structured config: validates every Hydra group at compose time.

Config groups mirror the package: conf/model, conf/quant, conf/peft -> alignlab.models;
conf/data -> alignlab.data; conf/stage -> alignlab.stages; conf/pipeline -> alignlab.pipeline;
conf/eval, conf/judge -> alignlab.eval; conf/logger -> alignlab.tracking; conf/paths -> here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from alignlab.data.config import DataConfig
from alignlab.eval.config import ForgettingConfig
from alignlab.eval.judge.config import JudgeConfig
from alignlab.models.config import ModelConfig, PeftConfig, QuantConfig
from alignlab.provenance import PaperConfig
from alignlab.schema import one_of, within
from alignlab.stages import REGISTRY


@dataclass
class NodeConfig:
    """One pipeline node: a stage kind, its dataset and its upstream nodes."""

    stage: str = "???"
    data: Optional[str] = None  # key into `data`; default: the stage kind's usual dataset
    shard: Optional[str] = None  # "i/n": train on shard i of n of the dataset, split by prompt
    init: Optional[str] = None  # upstream whose weights initialise this node
    policy: Optional[str] = None  # upstream policy to continue (DPO, PPO)
    reward: Optional[str] = None  # upstream reward model (PPO)
    hparams: Dict[str, Any] = field(default_factory=dict)  # this node's settings over stage.<kind>


@dataclass
class PipelineConfig:
    name: str = "sft"
    nodes: Dict[str, NodeConfig] = field(default_factory=dict)


@dataclass
class LoggerConfig:
    backend: str = one_of("wandb", "wandb", "none")
    project: str = "alignlab"
    mode: str = one_of("offline", "offline", "online", "disabled")
    entity: Optional[str] = None
    group: Optional[str] = None  # default: the experiment name
    tags: List[str] = field(default_factory=list)


@dataclass
class PathsConfig:
    data_home: Optional[str] = None  # a read-only data mirror (ALIGNLAB_DATA_HOME); None: the download cache
    cache_dir: str = "???"  # content-addressed stage cache
    model_cache: str = "???"  # converted embedded models
    run_dir: str = "???"  # this run's output directory (summary.json)


@dataclass
class ObjectiveConfig:
    """What a run returns to a Hydra sweeper that optimises (Optuna): one grid-summary column."""

    metric: Optional[str] = None  # e.g. "judge dpo:sft win_rate" or "dpo/eval_rewards/accuracies"
    gate_fail_value: Optional[float] = None  # set: a run with forgetting-gate violations scores this


@dataclass
class RootConfig:
    name: str = "quickstart"  # experiment name: W&B group and summary title
    dry_run: bool = False  # `alignlab check ...`: preflight, print the plan, train nothing
    seed: int = 42
    # Seconds a collective (a training step's all-reduce, a node barrier) may wait under `accelerate
    # launch`; the main process's evaluations are waited for without one (alignlab/ranks.py).
    process_group_timeout: int = within(1800, ge=1)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: Dict[str, DataConfig] = field(default_factory=dict)
    stage: Any = None  # one block per registered stage kind (`schema()` types it)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    eval: ForgettingConfig = field(default_factory=ForgettingConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)  # experiments/paper: sources and deviations


def schema() -> type:
    """RootConfig with `stage` typed from the stage registry: one structured block per kind."""
    group = make_dataclass("StageGroupConfig", [(kind, spec.config, field(default_factory=spec.config))
                                                for kind, spec in REGISTRY.items()])
    return make_dataclass("AlignlabConfig", [("stage", group, field(default_factory=group))], bases=(RootConfig,))


def register_configs() -> None:
    ConfigStore.instance().store(name="alignlab_schema", node=schema())
