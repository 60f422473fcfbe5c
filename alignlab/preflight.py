"""Check a composed config before any model loads or any cache entry is created.

`preflight(cfg)` checks every declared setting (choices and ranges, `alignlab.schema`), the
pipeline graph, each node's dataset (read and parsed in full: a bad file fails here, not after
upstream nodes trained), the model's path or hub id form and chat template, lm-eval task names,
the judge's comparisons, template and endpoint. It collects every problem and raises one
ConfigError listing them. What it loaded (the plan, each node's data) is returned for the run.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from alignlab.config import schema
from alignlab.errors import AlignlabError, ConfigError
from alignlab.schema import Range, allowed_choices
from alignlab.stages import BASE, REGISTRY, UPSTREAM_ROLES, generative, node_hparams

BUNDLED_PREFIX = "alignlab_"  # every task under alignlab/eval/tasks is named so
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Checked:
    """What preflight resolved: node order, each node's settings and dataset, the judge comparisons."""

    order: List[str] = field(default_factory=list)
    hparams: Dict[str, Any] = field(default_factory=dict)  # node -> stage.<kind> with its own hparams merged
    data: Dict[str, Any] = field(default_factory=dict)  # node -> LoadedData
    data_names: Dict[str, str] = field(default_factory=dict)  # node -> key into cfg.data
    overlap: Dict[str, int] = field(default_factory=dict)  # node -> held-out prompts trained upstream
    train_overlap: Dict[str, int] = field(default_factory=dict)  # node -> training prompts trained upstream
    comparisons: Optional[List[Tuple[str, str]]] = None  # None: defaults, decided when nodes finish


def plan(nodes: DictConfig) -> List[str]:
    """Topological order of the nodes; unknown stages, unknown upstreams and cycles are errors."""
    if not nodes:
        raise ConfigError("pipeline.nodes is empty: name at least one node, e.g. sft: {stage: sft}")
    for name, node in nodes.items():
        if node.stage not in REGISTRY:
            raise ConfigError(
                f"pipeline.nodes.{name}.stage: unknown stage '{node.stage}'; known: {', '.join(REGISTRY)}"
            )
        for role in UPSTREAM_ROLES:
            up = node.get(role)
            if up is None:
                continue
            if up not in nodes:
                raise ConfigError(f"pipeline.nodes.{name}.{role}: unknown upstream node '{up}'")
            allowed = REGISTRY[node.stage].upstream.get(role)
            if allowed is None:
                raise ConfigError(f"pipeline.nodes.{name}.{role}: a {node.stage} node takes no '{role}' upstream")
            if nodes[up].stage not in allowed:
                raise ConfigError(
                    f"pipeline.nodes.{name}.{role}: '{up}' is a {nodes[up].stage} node; "
                    f"a {node.stage} {role} must be one of: {', '.join(allowed)}"
                )
    order: List[str] = []
    state: Dict[str, str] = {}

    def visit(name: str, path: List[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ConfigError("pipeline.nodes form a cycle: " + " -> ".join(path + [name]))
        state[name] = "visiting"
        for role in UPSTREAM_ROLES:
            up = nodes[name].get(role)
            if up is not None:
                visit(up, path + [name])
        state[name] = "done"
        order.append(name)

    for name in nodes:
        visit(name, [])
    return order


def setting_problems(cfg: Any, of: Optional[type] = None, prefix: str = "") -> List[str]:
    """Values outside the choices and ranges the structured configs declare, by full key."""
    of = of or schema()
    problems: List[str] = []
    hints = typing.get_type_hints(of)
    for f in dataclasses.fields(of):
        key, value = f"{prefix}{f.name}", cfg.get(f.name) if isinstance(cfg, DictConfig) else None
        if value is None or value == f.default:  # a declared default is valid (and needs no choice source)
            continue
        choices, bounds = f.metadata.get("choices"), f.metadata.get("range")
        if choices is not None:
            allowed = allowed_choices(choices)
            for item in (value if f.metadata.get("each") else [value]):
                if item not in allowed:
                    near = difflib.get_close_matches(str(item), allowed, n=1)
                    hint = f" (did you mean '{near[0]}'?)" if near else ""
                    problems.append(f"{key}: '{item}' is not one of {', '.join(allowed)}{hint}")
        if isinstance(bounds, Range) and not bounds.allows(value):
            problems.append(f"{key}: {value} is out of range; it must be {bounds.describe()}")
        problems += _nested(value, hints[f.name], key)
    return problems


def _nested(value: Any, hint: Any, key: str) -> List[str]:
    """Recurse into dataclass fields and Dict[str, dataclass] fields."""
    if dataclasses.is_dataclass(hint):
        return setting_problems(value, hint, f"{key}.")
    args = typing.get_args(hint)
    if typing.get_origin(hint) is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return [p for name, item in value.items() for p in setting_problems(item, args[1], f"{key}.{name}.")]
    return []


def _cross_field_problems(cfg: DictConfig) -> List[str]:
    problems = []
    if cfg.quant.method != "none" and cfg.peft.method == "none":
        problems.append(f"quant.method={cfg.quant.method} with peft.method=none: a quantized base cannot be "
                        "fully fine-tuned; set peft=lora or quant=none")
    for name, weight in cfg.eval.max_drop.items():
        if not weight >= 0:
            problems.append(f"eval.max_drop.{name}: {weight} is out of range; it must be >= 0 (points)")
    return problems


def _node_settings_problems(cfg: DictConfig, checked: Checked) -> List[str]:
    """Each node's own `hparams` against its stage's schema (keys, types, choices, ranges)."""
    problems = []
    for name in checked.order:
        node = cfg.pipeline.nodes[name]
        try:
            checked.hparams[name] = h = node_hparams(cfg, name)
        except ConfigError as err:
            problems.append(str(err))
            continue
        own = set(node.hparams)
        problems += [p for p in setting_problems(h, REGISTRY[node.stage].config, f"pipeline.nodes.{name}.hparams.")
                     if p.split(":", 1)[0].rsplit(".", 1)[-1] in own]
    return problems


def _stage_problems(cfg: DictConfig, checked: Checked) -> List[str]:
    """Each stage kind's own checks of its nodes (the registry's `check`)."""
    problems = []
    for name in checked.order:
        spec = REGISTRY[cfg.pipeline.nodes[name].stage]
        if spec.check is not None:
            problems += spec.check(cfg, name, checked.hparams[name], checked)
    return problems


def model_problems(model_cfg: DictConfig, key: str) -> List[str]:
    """The model's name: an embedded name, a local directory with config.json, or a hub id; and a chat template."""
    from alignlab.models.chat_templates import TEMPLATES
    from alignlab.models.embedded import BUILDERS, PREFIX, is_embedded

    name, problems = str(model_cfg.name_or_path), []
    local = Path(name).expanduser()
    if is_embedded(name):
        if name[len(PREFIX):] not in BUILDERS:
            problems.append(f"{key}.name_or_path: unknown embedded model '{name}'; known: "
                            + ", ".join(PREFIX + n for n in sorted(BUILDERS)))
    elif local.exists():
        if not (local / "config.json").is_file():
            problems.append(f"{key}.name_or_path: model directory '{name}' has no config.json")
        elif model_cfg.chat_template is None and not _has_chat_template(local):
            problems.append(f"{key}.name_or_path: model directory '{name}' has no chat template; set "
                            f"{key}.chat_template")
    elif name.startswith((".", "/", "~")) or not HUB_ID.match(name):
        problems.append(f"{key}.name_or_path: model path '{name}' does not exist (and is not a hub id owner/name)")
    spec = model_cfg.chat_template
    if spec is not None and spec not in TEMPLATES and not (Path(spec).suffix in (".jinja", ".j2")
                                                           and Path(spec).expanduser().is_file()):
        problems.append(f"{key}.chat_template: '{spec}' is neither one of {', '.join(TEMPLATES)} nor an existing "
                        ".jinja file")
    return problems


def _has_chat_template(directory: Path) -> bool:
    import json

    if any((directory / f).is_file() for f in ("chat_template.jinja", "chat_template.json")):
        return True
    config = directory / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))


def _data_problems(cfg: DictConfig, checked: Checked, data_home: Optional[str]) -> List[str]:
    """Load every node's dataset (once per dataset and row kind)."""
    from alignlab.data import load_data
    from alignlab.data.selection import parse_shard

    problems, loaded = [], {}
    for name in checked.order:
        node = cfg.pipeline.nodes[name]
        data_name = node.data or REGISTRY[node.stage].default_data
        if data_name not in cfg.data:
            problems.append(f"pipeline.nodes.{name}.data: no dataset '{data_name}' in the data group "
                            f"(have: {', '.join(cfg.data) or 'none'})")
            continue
        try:
            shard = parse_shard(node.shard) if node.shard is not None else None
        except ValueError as err:
            problems.append(f"pipeline.nodes.{name}.shard: {err}")
            continue
        what = (data_name, REGISTRY[node.stage].data_kind, shard)
        if what not in loaded:
            try:
                loaded[what] = load_data(cfg.data[data_name], what[1], data_home=data_home, shard=shard)
            except AlignlabError as err:
                loaded[what] = None
                problems.append(f"data.{data_name}" + (f" (pipeline.nodes.{name}.shard)" if shard else "") + f": {err}")
        if loaded[what] is not None:
            checked.data[name], checked.data_names[name] = loaded[what], data_name
    return problems


def ancestors(nodes: DictConfig, name: str) -> set:
    """Every node upstream of `name`, at any depth."""
    ups = {nodes[name][role] for role in UPSTREAM_ROLES if nodes[name].get(role) is not None}
    return ups.union(*(ancestors(nodes, up) for up in ups))


def upstream_overlap(cfg: DictConfig, checked: Checked, split: str) -> Dict[str, int]:
    """Per node: prompts of its `split` rows (eval or train) that are training prompts of an upstream
    node. Held out: a leak (0 when every dataset is split with the same seed and no downstream
    dataset holds out a larger fraction); train: 0 when rounds of a method train on disjoint shards."""
    from alignlab.data.selection import overlap

    return {name: overlap(getattr(checked.data[name], split),
                          [checked.data[up].train for up in sorted(ancestors(cfg.pipeline.nodes, name))])
            for name in checked.order}


def task_problems(eval_cfg: DictConfig) -> List[str]:
    """Task names resolved with lm-eval's TaskManager: the bundled tasks and include_paths first,
    lm-eval's own tasks (a slower index) only for names not found there."""
    from lm_eval.tasks import TaskManager

    from alignlab.eval.forgetting import MMLU_GROUP, TASKS_DIR, mmlu_subjects

    problems = [f"eval.include_paths: '{p}' is not a directory" for p in eval_cfg.include_paths
                if not Path(p).expanduser().is_dir()]
    unknown = sorted(set(eval_cfg.mmlu_subjects) - set(mmlu_subjects()))
    if unknown:
        problems.append(f"eval.mmlu_subjects: unknown subject(s) {', '.join(unknown)}")
    if MMLU_GROUP not in eval_cfg.tasks and eval_cfg.mmlu_subjects:
        problems.append(f"eval.mmlu_subjects is set but eval.tasks has no {MMLU_GROUP}")
    problems += [f"eval.metrics.{task}: '{task}' is not in eval.tasks ({', '.join(eval_cfg.tasks)})"
                 for task in eval_cfg.metrics if task not in eval_cfg.tasks]
    include = [str(TASKS_DIR)] + [str(Path(p).expanduser()) for p in eval_cfg.include_paths if Path(p).expanduser().is_dir()]
    names = list(eval_cfg.tasks)
    known = set(TaskManager(include_path=include, include_defaults=False).all_tasks)
    if any(n not in known and not n.startswith(BUNDLED_PREFIX) for n in names):  # maybe one of lm-eval's own
        known = set(TaskManager(include_path=include).all_tasks)
    for n in names:
        if n not in known:
            near = difflib.get_close_matches(n, sorted(known), n=3, cutoff=0.6)
            problems.append(f"eval.tasks: unknown lm-eval task '{n}'"
                            + (f"; close: {', '.join(near)}" if near else ""))
    return problems


def _judge_problems(cfg: DictConfig, checked: Checked, data_home: Optional[str]) -> List[str]:
    from alignlab.data import load_data
    from alignlab.eval.judge.templates import load_template

    j, problems = cfg.judge, []
    models = [BASE] + [n for n in checked.order if generative(cfg.pipeline.nodes[n].stage)]
    if j.comparisons:
        checked.comparisons = []
        for spec in j.comparisons:
            a, sep, b = str(spec).partition(":")
            bad = [side for side in (a, b) if side not in models]
            if not sep or a == b:
                problems.append(f"judge.comparisons: '{spec}': write two different models as 'a:b'")
            elif bad:
                problems.append(f"judge.comparisons: '{spec}': no generative node or base named "
                                f"'{bad[0]}' (have: {', '.join(models)})")
            else:
                checked.comparisons.append((a, b))
    elif len(models) == 1:
        problems.append("judge.enabled: the pipeline has no generative node to judge; set judge=none")
    if j.prompts not in cfg.data:
        problems.append(f"judge.prompts: no dataset '{j.prompts}' in the data group (have: {', '.join(cfg.data)})")
    else:
        try:
            load_data(cfg.data[j.prompts], "prompt", data_home=data_home)
        except AlignlabError as err:
            problems.append(f"data.{j.prompts}: {err}")
    try:
        load_template(j.template, data_home)
    except AlignlabError as err:
        problems.append(str(err))
    if j.calibrate:
        from alignlab.eval.judge.calibrate import reference_sets

        try:
            reference_sets(cfg, data_home)
        except AlignlabError as err:
            problems.append(str(err))
    if j.backend == "openai":
        url = urlparse(str(j.openai.base_url))
        if url.scheme not in ("http", "https") or not url.netloc:
            problems.append(f"judge.openai.base_url: '{j.openai.base_url}' is not an http(s) URL with a host")
    else:
        problems += model_problems(j.local, "judge.local")
    return problems


def reward_kl_problems(cfg: DictConfig) -> List[str]:
    """eval.reward_kl: its reward node is a reward node of the pipeline, on LoRA adapters, with a dataset."""
    s, nodes = cfg.eval.reward_kl, cfg.pipeline.nodes
    rewards = [n for n, node in nodes.items() if node.stage == "reward"]
    have = f"(reward nodes: {', '.join(rewards) or 'none'})"
    problems = []
    if s.reward is None:
        problems.append(f"eval.reward_kl.reward: name the reward node that scores the samples {have}")
    elif s.reward not in nodes:
        problems.append(f"eval.reward_kl.reward: no node '{s.reward}' in the pipeline {have}")
    elif nodes[s.reward].stage != "reward":
        problems.append(f"eval.reward_kl.reward: '{s.reward}' is a {nodes[s.reward].stage} node, not a reward node {have}")
    if cfg.peft.method != "lora":
        problems.append("eval.reward_kl: the models share one base through LoRA adapters (as PPO's); set peft=lora")
    if s.data not in cfg.data:
        problems.append(f"eval.reward_kl.data: no dataset '{s.data}' in the data group (have: {', '.join(cfg.data)})")
    return problems


def held_out_problems(cfg: DictConfig, checked: Checked, data_home: Optional[str]) -> List[str]:
    """eval.reward_kl: its dataset reads and holds out enough prompts, none of them a training prompt of a node."""
    from alignlab.data.selection import overlap
    from alignlab.eval.reward_kl import held_out_prompts

    try:
        prompts = held_out_prompts(cfg, data_home)
    except ConfigError as err:
        return [str(err)]
    except AlignlabError as err:
        return [f"data.{cfg.eval.reward_kl.data}: {err}"]
    rows = [{"prompt": p} for p in prompts]
    return [f"eval.reward_kl.data: {count} of its {len(rows)} held-out prompts are training prompts of node {name} "
            f"(split every dataset with the same eval_fraction and split_seed)"
            for name, data in checked.data.items() if (count := overlap(rows, [data.train]))]


def preflight(cfg: DictConfig) -> Checked:
    """Every check that needs no model; raises one ConfigError listing every problem found."""
    from alignlab.data.store import data_home as resolve_data_home

    checked = Checked()
    problems = setting_problems(cfg) + _cross_field_problems(cfg) + model_problems(cfg.model, "model")
    if cfg.eval.reward_kl.enabled:
        problems += reward_kl_problems(cfg)
    try:
        checked.order = plan(cfg.pipeline.nodes)
        problems += _node_settings_problems(cfg, checked)
    except ConfigError as err:
        problems.append(str(err))
    try:
        data_home = str(resolve_data_home(cfg.paths.data_home).root) if cfg.paths.data_home else None
    except AlignlabError as err:
        raise ConfigError("\n".join(problems + [f"paths.data_home: {err}"])) from None
    if not problems:  # the data, tasks and judge checks assume valid settings
        problems += _data_problems(cfg, checked, data_home)
        problems += _stage_problems(cfg, checked)
        if cfg.eval.enabled:
            problems += task_problems(cfg.eval)
        if cfg.eval.reward_kl.enabled:
            problems += held_out_problems(cfg, checked, data_home)
        if cfg.judge.enabled:
            problems += _judge_problems(cfg, checked, data_home)
    problems = list(dict.fromkeys(problems))  # a stage-level problem is found once per node of the stage
    if problems:
        head = f"{len(problems)} problems in the config:\n  " if len(problems) > 1 else ""
        raise ConfigError(head + "\n  ".join(problems))
    checked.overlap = upstream_overlap(cfg, checked, "eval")
    checked.train_overlap = upstream_overlap(cfg, checked, "train")
    return checked


def describe_plan(cfg: DictConfig, checked: Checked) -> str:
    """The dry run's plan: each node's key, cached or to train, data and upstreams; evaluations; judging."""
    from alignlab.node_store import NodeStore, node_key
    from alignlab.stages.context import Artifact

    cache = Path(cfg.paths.cache_dir).expanduser()
    store = NodeStore(cache)
    lines, artifacts = [f"plan of '{cfg.name}' (stage cache {cache}):"], {}
    for i, name in enumerate(checked.order, 1):
        node, data = cfg.pipeline.nodes[name], checked.data[name]
        upstream = {role: artifacts[node[role]] for role in UPSTREAM_ROLES if node.get(role) is not None}
        key = node_key(cfg, node.stage, checked.hparams[name], data.fingerprint, upstream)
        path = store.entry(node.stage, key)
        artifacts[name] = Artifact(node=name, stage=node.stage, key=key, path=path)
        ups = ", ".join(f"{role}={art.node}" for role, art in upstream.items()) or "base model"
        shard = f" (shard {node.shard})" if node.shard else ""
        lines.append(f"  {i}. {name} ({node.stage}) key {key[:16]}: {'cached' if store.is_complete(path) else 'to train'}; "
                     f"from {ups}; data.{checked.data_names[name]}{shard} {data.report['train']} train / "
                     f"{data.report['eval']} eval rows"
                     + (f"; {checked.overlap[name]} held-out prompt(s) trained upstream" if checked.overlap[name] else ""))
    e = cfg.eval
    lines.append(f"  forgetting: {', '.join(e.tasks)} (limit {e.limit}, gate {e.gate}) on the base and every "
                 "generative node" if e.enabled else "  forgetting: off")
    r = e.reward_kl
    lines.append(f"  reward-KL: {r.prompts} held-out prompts of data.{r.data} x {r.n} samples, scored by {r.reward}, "
                 f"KL from the {r.reference} model, on the base and every generative node" if r.enabled
                 else "  reward-KL: off")
    if cfg.judge.enabled:
        pairs = ([f"{a} vs {b}" for a, b in checked.comparisons] if checked.comparisons is not None
                 else ["each generative node vs its parent (the base for a root node), nodes of rival methods "
                       "against each other"])
        lines.append(f"  judge ({cfg.judge.backend}, {cfg.judge.num_prompts} prompts of data.{cfg.judge.prompts}, "
                     f"both orders): {'; '.join(pairs)}")
        c = cfg.judge.calibration
        lines.append(f"  judge calibration: {c.pairs} labelled pairs each of AlpacaEval GPT-4 annotations and the "
                     f"held-out split of data.{c.human} (cached per judge)" if cfg.judge.calibrate
                     else "  judge calibration: off")
    else:
        lines.append("  judge: off")
    return "\n".join(lines)
