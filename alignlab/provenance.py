"""Where a paper config's values come from: each method hyperparameter with its source, and every
intended difference from the source declared with its reason.

A paper experiment carries a `paper:` block: `sourced` maps a config key to the value its source
gives and that source (paper section or repository@commit:path); `deviations` maps a config key
(or a group such as `model`) to why alignlab's value differs. `undeclared_mismatches` lists the
keys whose composed value differs from the source without a declared deviation; `mini_problems`
checks that a CPU mini changes scale, model, data or adapter only, and in the way that keeps the
method (the same warmup fraction, the same minibatches per PPO rollout, LoRA's learning-rate rule).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from alignlab import record
from alignlab.schema import one_of, within

# choice: a deliberate different value; unsupported: alignlab cannot express the source's setting;
# model/data: a stand-in for a model or dataset that is not public or not runnable here;
# adapter: LoRA where the source fine-tuned every weight; scale: less training, same method;
# hardware: a setting that follows the device (e.g. the 4-bit compute dtype on a CPU).
DEVIATION_KINDS = ("choice", "unsupported", "model", "data", "adapter", "scale", "hardware")
MINI_KINDS = ("model", "data", "adapter", "scale", "hardware")
# Settings that change how a run is operated (logging, checkpoints, memory), not what it trains.
OPERATIONAL = frozenset({"logging_steps", "save_steps", "eval_steps", "per_device_eval_batch_size", "score_batch_size",
                         "collapse_patience", "collapse_tolerance", "gradient_checkpointing", "mixed_precision",
                         "on_too_long", "seed", "sample_responses"})
# A LoRA adapter trains at about 10x the learning rate that is best for full fine-tuning of the same
# model (Schulman et al. 2025, "LoRA Without Regret", Thinking Machines Lab): the rule a mini that
# swaps full fine-tuning for LoRA applies to the paper's learning rates.
LORA_LR_FACTOR = 10.0
_ABSENT = object()


@dataclass
class SourcedValue:
    """The value a source gives for one config key, and where it says so."""

    value: Any = None
    source: str = "???"  # "paper, appendix C.1" or "owner/repo@commit:path"


@dataclass
class Deviation:
    """An intended difference from the source for one config key (or group)."""

    reason: str = "???"
    kind: str = one_of("choice", *DEVIATION_KINDS)
    # A mini's warmup as a fraction: the full-scale run's optimizer steps the source's warmup steps
    # are a fraction of (so the mini warms up over the same share of its training).
    total_steps: Optional[int] = within(None, ge=1)


@dataclass
class PaperConfig:
    """Provenance of a paper experiment (empty for other experiments)."""

    citation: Optional[str] = None
    code: Optional[str] = None  # the reference implementation, owner/repo@commit; sources cite its files as "code:path"
    sourced: Dict[str, SourcedValue] = field(default_factory=dict)
    deviations: Dict[str, Deviation] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def same(a: Any, b: Any) -> bool:
    """Equal config values; numbers compare to 1e-9 relative (1e-6 written as 1.0e-6 or 0.000001)."""
    a, b = _plain(a), _plain(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def covering(key: str, deviations) -> Optional[str]:
    """The declared deviation covering `key`: the key itself or a group it belongs to."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in deviations:
            return prefix
    return None


def undeclared_mismatches(cfg: DictConfig) -> List[str]:
    """Sourced values the composed config does not hold, without a deviation that says why."""
    problems = []
    for key, sourced in cfg.paper.sourced.items():
        actual = OmegaConf.select(cfg, key, default=_ABSENT)
        if actual is _ABSENT:
            problems.append(f"paper.sourced: '{key}' is not a config key")
        elif not same(actual, sourced.value) and covering(key, cfg.paper.deviations) is None:
            problems.append(f"{key}: {_plain(actual)!r} but {sourced.source} gives {_plain(sourced.value)!r} "
                            "and no deviation is declared")
    return problems


def stale_deviations(cfg: DictConfig) -> List[str]:
    """Deviations declared for a sourced key whose value now matches the source (nothing deviates)."""
    return [f"paper.deviations: '{key}' is declared but the config holds the source's value"
            for key, sourced in cfg.paper.sourced.items()
            if key in cfg.paper.deviations and same(OmegaConf.select(cfg, key), sourced.value)]


def paper_section(cfg: DictConfig) -> record.PaperRecord:
    """summary.json's record of a paper run: the citation, its declared deviations, and where this
    run's values depart from the sources without one (a command-line override, a grid axis)."""
    return record.PaperRecord(
        citation=cfg.paper.citation, departures=undeclared_mismatches(cfg),
        deviations={k: record.Deviation(kind=d.kind, reason=d.reason) for k, d in cfg.paper.deviations.items()})


def leaves(node: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested dict."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def changed_keys(full: DictConfig, mini: DictConfig, groups: Tuple[str, ...]) -> Dict[str, Tuple[Any, Any]]:
    """Leaf keys under `groups` (e.g. "peft", "stage.dpo") whose values differ: key -> (full, mini)."""
    a = dict(leaves({g: _plain(OmegaConf.select(full, g)) for g in groups}))
    b = dict(leaves({g: _plain(OmegaConf.select(mini, g)) for g in groups}))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if not same(a.get(k), b.get(k))}


def mini_problems(full: DictConfig, mini: DictConfig) -> List[str]:
    """How a CPU mini departs from its paper config other than by declared scale/model/data/adapter."""
    kinds = sorted({node.stage for node in full.pipeline.nodes.values()})
    groups = ("model", "quant", "peft", "data", *(f"stage.{k}" for k in kinds))
    problems = []
    if _plain(full.pipeline) != _plain(mini.pipeline):
        problems.append("pipeline: a mini runs the paper's pipeline unchanged")
    own = {k: v for k, v in mini.paper.deviations.items() if k not in full.paper.deviations
           or _plain(full.paper.deviations[k]) != _plain(v)}
    for key, (before, after) in changed_keys(full, mini, groups).items():
        if key.rsplit(".", 1)[-1] in OPERATIONAL:
            continue
        declared = covering(key, own)
        if declared is None:
            problems.append(f"{key}: {before!r} -> {after!r} in the mini without a declared deviation")
            continue
        deviation = own[declared]
        if deviation.kind not in MINI_KINDS:
            problems.append(f"{key}: a mini may deviate by {', '.join(MINI_KINDS)}, not '{deviation.kind}'")
        elif key.endswith(".learning_rate") and not (
                deviation.kind == "adapter" and after is not None and before is not None
                and same(after, before * LORA_LR_FACTOR)):
            problems.append(f"{key}: a mini changes a learning rate only as LoRA's rule, "
                            f"{LORA_LR_FACTOR:g} x {before!r} (kind adapter)")
        elif key.endswith(".warmup_steps"):
            problems += _warmup_problems(key, before, after, deviation)
    for kind in kinds:  # on-policy stages: the same number of optimizer minibatches per rollout batch
        a, b = full.stage[kind], mini.stage[kind]
        if "rollout_batch_size" in a and a.rollout_batch_size * b.mini_batch_size != b.rollout_batch_size * a.mini_batch_size:
            problems.append(f"stage.{kind}: the mini takes {b.rollout_batch_size / b.mini_batch_size:g} minibatches "
                            f"per rollout, the paper {a.rollout_batch_size / a.mini_batch_size:g}")
    return problems


def _warmup_problems(key: str, before: float, after: float, deviation) -> List[str]:
    """A mini warms up over the same share of its training: a fraction, equal to the paper's."""
    if after >= 1:
        return [f"{key}: a mini's warmup is a fraction of its training (< 1), not {after:g} steps"]
    if before < 1:
        return [] if same(before, after) else [f"{key}: the paper warms up over {before!r} of training, "
                                                f"the mini over {after!r}"]
    if deviation.total_steps is None:
        return [f"{key}: the paper's {before!r} warmup steps need `total_steps` in the deviation to become a fraction"]
    expected = round(before / deviation.total_steps, 4)
    return [] if math.isclose(after, expected, rel_tol=1e-3) else [
        f"{key}: {before!r} of {deviation.total_steps} steps is {expected}, not {after!r}"]


def _cell(value: Any) -> str:
    """A value as YAML writes it (true, null, 5e-07, 16), lists comma-joined; `|` escaped for tables."""
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def render_markdown(papers: Dict[str, DictConfig]) -> str:
    """README section: per paper experiment, each sourced value as configured, and every deviation."""
    out = []
    for name, cfg in papers.items():
        paper = cfg.paper
        code = [f"Reference code: `{paper.code}` (`code:` below).", ""] if paper.code else []
        out += [f"<details><summary><code>paper/{name}</code>: {paper.citation}</summary>", "", *code,
                "| key | value | source |", "|---|---|---|"]
        for key, sourced in paper.sourced.items():
            actual = _plain(OmegaConf.select(cfg, key))
            shown = _cell(actual) if same(actual, sourced.value) else f"{_cell(actual)} (source: {_cell(_plain(sourced.value))})"
            out.append(f"| `{key}` | {shown} | {_cell(sourced.source)} |")
        out += ["", "| deviation | kind | reason |", "|---|---|---|"]
        out += [f"| `{key}` | {d.kind} | {_cell(d.reason)} |" for key, d in paper.deviations.items()]
        out += ["", "</details>", ""]
    return "\n".join(out).rstrip() + "\n"
