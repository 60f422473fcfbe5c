"""The run record: what a run writes to summary.json, as dataclasses.

The pipeline fills one `RunRecord` as it goes and writes it with `dump`; the report, the grid
summary, the W&B compare run and the sweep objective read a summary with `load` and use these
types. `schema_version` changes whenever a field is renamed, removed or changes meaning; `load`
refuses other versions and anything that does not match the types, naming the file and the field.
Free-form maps (a node's metrics and settings, benchmark scores) stay plain dicts.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from alignlab.errors import AlignlabError
from alignlab.stats import PairedDelta

SCHEMA_VERSION = 1
SUMMARY = "summary.json"  # in the run directory


class RecordError(AlignlabError):
    """A summary file this version of alignlab cannot read (other schema version, malformed)."""


def _omitted() -> Any:
    """A field left out of the JSON while it is None (present only for some runs or nodes)."""
    return field(default=None, metadata={"omit_none": True})


@dataclass(kw_only=True)
class Step:
    """Rows one data step removed: how many, the first row numbers, the first problems (bad, ties)."""

    count: int
    rows: List[int]
    examples: Optional[List[str]] = _omitted()


@dataclass(kw_only=True)
class ShardReport:
    """The node trained on shard `index` of `count` (by prompt); `rows`: train rows in each shard."""

    index: int
    count: int
    rows: List[int]


@dataclass(kw_only=True)
class DataReport:
    """`alignlab.data.load_data`'s account of a dataset (see LoadedData)."""

    source: str
    path: str
    format: str
    kind: str
    row_numbering: str
    read: int
    filtered: int
    parsed: int
    bad: Step
    ties: Step
    duplicates: Step
    too_long: Step
    truncated: Dict[str, int]
    train: int
    eval: int
    shard: Optional[ShardReport] = _omitted()


@dataclass(kw_only=True)
class NodeData(DataReport):
    """A node's dataset: its key in the data group, the report, and how many of its held-out
    (`overlap`) and training (`train_overlap`) prompts an upstream node trained on."""

    name: str
    overlap: int
    train_overlap: int


@dataclass(kw_only=True)
class NodeRecord:
    stage: str
    key: str
    upstream: Dict[str, str]  # role -> node name
    data: NodeData
    hparams: Dict[str, Any]  # stage.<kind> with the node's own hparams merged (resolved)
    status: str  # running | trained | cached | failed
    artifact: Optional[str] = _omitted()
    metrics: Dict[str, Any] = field(default_factory=dict)
    seconds: Optional[float] = _omitted()
    error: Optional[str] = _omitted()

    @property
    def cache_hit(self) -> bool:
        return self.status == "cached"


@dataclass(kw_only=True)
class Deviation:
    kind: str
    reason: str


@dataclass(kw_only=True)
class PaperRecord:
    """A paper run: the citation, declared deviations, values moved off the source without one."""

    citation: str
    deviations: Dict[str, Deviation]
    departures: List[str]


@dataclass(kw_only=True)
class PrimaryMetric:
    metric: str
    higher_is_better: bool
    gated: bool


@dataclass(kw_only=True)
class Delta:
    """One task of a node's forgetting check: scores and paired deltas (points) vs base and parent."""

    task: str
    metric: str
    higher_is_better: bool
    gated: bool
    base: Optional[float]
    parent: Optional[float]
    node: Optional[float]
    vs_base: PairedDelta
    vs_parent: Optional[PairedDelta]


@dataclass(kw_only=True)
class ForgettingNode:
    scores: Dict[str, Dict[str, Any]]  # task -> {metric: value, metric_stderr: value}
    parent: Optional[str]
    deltas: List[Delta]


@dataclass(kw_only=True)
class Violation:
    node: str
    task: str
    metric: str
    before: Optional[float]
    after: Optional[float]
    delta: float
    lo: Optional[float]
    hi: Optional[float]
    n: int
    confidence: float
    max_drop: float


@dataclass(kw_only=True)
class ForgettingRecord:
    tasks: List[str]
    limit: Optional[int]
    num_fewshot: Optional[int]
    max_drop: Dict[str, float]  # task (or "default") -> points
    gate: str
    confidence: float
    metrics: Dict[str, PrimaryMetric]  # task -> its primary metric
    base: Optional[Dict[str, Dict[str, Any]]]  # task -> scores of the base model
    nodes: Dict[str, ForgettingNode]
    violations: List[Violation]

    def delta(self, node: str, task: str) -> Optional[Delta]:
        """The node's row for `task`, if the node was checked."""
        rows = self.nodes[node].deltas if node in self.nodes else []
        return next((d for d in rows if d.task == task), None)


@dataclass(kw_only=True)
class Comparison:
    """One judged pair: P(a better) with its bootstrap CI, outcome counts and rates for `a`."""

    a: str
    b: str
    p_better: Optional[float]
    p_better_ci: Optional[List[float]]
    win: int
    tie: int
    loss: int
    unparseable: int
    n: int
    confidence: float
    win_rate: Optional[float]
    win_rate_ci: List[float]
    tie_rate: Optional[float]
    tie_rate_ci: List[float]
    loss_rate: Optional[float]
    loss_rate_ci: List[float]
    tie_mass: Optional[float]
    position_bias: Optional[float]
    consistency: Optional[float]
    judge_informative: Optional[bool]  # None: the judge was not calibrated


@dataclass(kw_only=True)
class CalibrationSet:
    pairs: int
    n: int
    unparseable: int
    agreement: Optional[float]
    agreement_ci: List[float]
    agreement_one_order: Optional[float]
    p_label_better: Optional[float]
    p_label_better_ci: Optional[List[float]]
    consistency: Optional[float]
    position_bias: Optional[float]
    tie_mass: Optional[float]
    informative: bool


@dataclass(kw_only=True)
class Calibration:
    judge: str
    template: str
    sets: Dict[str, CalibrationSet]
    informative: bool


@dataclass(kw_only=True)
class JudgePrompts(DataReport):
    dataset: str
    count: int


@dataclass(kw_only=True)
class JudgeRecord:
    backend: str
    judge: Optional[str]  # the judge's identity, set when judging starts
    template: str
    prompts: JudgePrompts
    responses: Dict[str, str]  # model -> responses JSONL
    comparisons: Dict[str, Comparison]  # "a:b" -> comparison
    calibration: Optional[Calibration] = _omitted()
    tie_margin: Optional[float] = _omitted()
    unparseable_replies: Optional[int] = _omitted()
    judgements: Optional[str] = _omitted()


@dataclass(kw_only=True)
class RewardKLNode:
    """One model's gold reward and KL from its reference on the held-out prompts: means over
    prompts (each prompt's mean over its samples) with bootstrap intervals over prompts."""

    stage: str  # "base" for the base model
    reference: str  # the model the KL is measured from: a node name or "base"
    label: str  # the node's own settings (`hparams`), e.g. "beta=0.1"; "" when it has none
    reward: float
    reward_ci: List[float]
    kl: float
    kl_ci: List[float]
    prompts: int
    n: int  # samples scored (prompts x samples per prompt)
    eos_fraction: float  # samples that ended with EOS within max_new_tokens
    response_length: float  # mean response tokens


@dataclass(kw_only=True)
class RewardKLRecord:
    """summary.json's `reward_kl`: the settings of the evaluation and each model's point."""

    reward: str  # the reward node that scored the samples
    data: str
    prompts: int
    samples_per_prompt: int
    max_new_tokens: int
    temperature: float
    seed: int
    reference: str  # upstream | base
    confidence: float
    nodes: Dict[str, RewardKLNode]  # "base" first, then the generative nodes in pipeline order

    def columns(self) -> Dict[str, float]:
        """Flat summary columns (grid summary, W&B compare run): `<model>/reward_kl/<reward|kl>[_lo|_hi]`."""
        out: Dict[str, float] = {}
        for name, p in self.nodes.items():
            for what, value, ci in (("reward", p.reward, p.reward_ci), ("kl", p.kl, p.kl_ci)):
                out.update({f"{name}/reward_kl/{what}": value, f"{name}/reward_kl/{what}_lo": ci[0],
                            f"{name}/reward_kl/{what}_hi": ci[1]})
        return out


@dataclass(kw_only=True)
class RunRecord:
    schema_version: int = SCHEMA_VERSION
    name: str
    run_dir: str
    started: str  # ISO time
    status: str  # running | ok | failed
    finished: Optional[str] = _omitted()
    error: Optional[str] = _omitted()
    paper: Optional[PaperRecord] = _omitted()
    nodes: Dict[str, NodeRecord] = field(default_factory=dict)
    forgetting: Optional[ForgettingRecord] = _omitted()
    judge: Optional[JudgeRecord] = _omitted()
    reward_kl: Optional[RewardKLRecord] = _omitted()  # absent in summaries written before it existed


def from_dict(cls: type, value: Any, where: str = "") -> Any:
    """`value` (parsed JSON) as `cls`, checked field by field; a mismatch raises RecordError naming
    the field's path."""
    return _build(cls, value, where or cls.__name__)


def _build(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _build(next(a for a in args if a is not type(None)), value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = [k for k in value if k not in fields]
        if unknown:
            raise RecordError(f"{where}: unknown field '{unknown[0]}'")
        missing = [n for n, f in fields.items() if n not in value and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise RecordError(f"{where}: missing field '{missing[0]}'")
        return tp(**{k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"{where}: expected a list, got {type(value).__name__}")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    expected = {str: str, int: int, bool: bool, float: (int, float)}.get(tp)
    if expected is not None and (not isinstance(value, expected) or (tp is not bool and isinstance(value, bool))):
        raise RecordError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def to_dict(value: Any) -> Any:
    """A record (or part of one) as plain JSON data, fields in declaration order."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get("omit_none") and getattr(value, f.name) is None)}
    if isinstance(value, dict):
        return {k: to_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_dict(v) for v in value]
    return value


def dump(record: RunRecord, path: Path) -> None:
    """Write `record` to `path` as JSON (atomically: a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(to_dict(record), indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def load(path: Path) -> RunRecord:
    """The RunRecord in a summary.json; RecordError naming the file if it is not one of this schema version."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise RecordError(f"{path}: not a readable summary ({err})") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        found = ("no schema_version (written before versioned summaries)" if version is None
                 else f"schema_version {version!r}")
        raise RecordError(f"{path}: this summary has {found}; this alignlab reads schema_version {SCHEMA_VERSION}")
    try:
        return from_dict(RunRecord, data, "summary")
    except RecordError as err:
        raise RecordError(f"{path}: {err}") from None
