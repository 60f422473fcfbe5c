"""Structured config of the `eval` Hydra group (conf/eval): forgetting checks with lm-eval and the
reward-KL evaluation (`eval.reward_kl`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from alignlab.schema import one_of, within


@dataclass
class RewardKLConfig:
    """Gold reward and KL from a reference of the base and every generative node (alignlab/eval/reward_kl.py).

    Each model samples `n` responses to each of the first `prompts` held-out prompts of
    `data.<data>` (its eval split: prompts no node trained on when every dataset is split with the
    same seed), with the same seeds for every model. The reward node `reward` of the pipeline scores
    them as PPO's reward model does; the sequence KL(model || reference) is the sum of per-token
    log-ratios on the model's own samples. `reference`: upstream (the node's generative parent, the
    base for a root node) or base. Means come with a bootstrap interval over prompts.
    """

    enabled: bool = False
    reward: Optional[str] = None  # name of a reward node of the pipeline, e.g. rm_gold
    data: str = "prompts"  # key into `data`; its held-out split gives the prompts
    prompts: int = within(16, ge=1)
    n: int = within(2, ge=1)  # samples per prompt
    max_new_tokens: int = within(32, ge=1)
    temperature: float = within(1.0, gt=0)
    seed: int = 1234
    reference: str = one_of("upstream", "upstream", "base")
    max_prompt_length: int = within(256, ge=1)  # prompt tokens kept (keep_end), as PPO's budget
    reward_max_length: int = within(512, ge=1)  # tokens of prompt + response the reward node reads
    batch_size: int = within(16, ge=1)  # sequences per generate() call
    mixed_precision: str = one_of("auto", "auto", "no", "bf16", "fp16")  # auto: bf16 where native
    confidence: float = within(0.95, gt=0, lt=1)  # of the bootstrap intervals


@dataclass
class ForgettingConfig:
    """Benchmarks run on each node's model and compared, item by item, with the base and the parent node.

    `tasks` are bundled mirror tasks (`alignlab_*`, see alignlab/eval/tasks) or any task, group
    or tag lm-eval knows (those read the Hugging Face hub). A group (alignlab_mmlu) is gated as
    one score; its subtasks are shown, not gated. `metrics` picks each task's one gated metric
    (`acc`, `exact_match,strict-match`; default: lm-eval's first for the task). `max_drop` maps a
    task to the largest allowed drop in points (acc 0.55 -> 0.50 is 5 points); key `default`
    covers tasks not listed. A node violates the gate when it drops by more than that AND the
    `confidence` interval of its paired delta excludes zero. `gate`: warn (log violations) or
    fail (stop the pipeline).
    """

    enabled: bool = True
    tasks: List[str] = field(default_factory=lambda: ["alignlab_arc_easy", "alignlab_piqa"])
    limit: Optional[int] = within(None, ge=1)  # items per task; None: all
    num_fewshot: Optional[int] = within(None, ge=0)  # None: each task's default (gsm8k 5, others 0)
    batch_size: int = within(8, ge=1)
    seed: int = 1234  # python, numpy, torch and few-shot sampling seeds
    bootstrap_iters: int = within(1000, ge=0)  # for stderrs that need bootstrapping; 0 disables stderrs
    mmlu_subjects: List[str] = field(default_factory=list)  # subjects of alignlab_mmlu; empty: all 57
    include_paths: List[str] = field(default_factory=list)  # extra lm-eval task directories
    metrics: Dict[str, str] = field(default_factory=dict)  # task -> gated metric; unset: lm-eval's first
    max_drop: Dict[str, float] = field(default_factory=lambda: {"default": 5.0})
    confidence: float = within(0.95, gt=0, lt=1)  # of the paired deltas' intervals
    gate: str = one_of("warn", "warn", "fail")
    reward_kl: RewardKLConfig = field(default_factory=RewardKLConfig)  # independent of `enabled`
