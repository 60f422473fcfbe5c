"""Structured config of the `judge` Hydra group (conf/judge): pairwise LLM judging between stages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from alignlab.models.config import ModelConfig
from alignlab.schema import one_of, within
from alignlab.stages.config import PRECISIONS


@dataclass
class OpenAIJudgeConfig:
    """An OpenAI-compatible chat endpoint (vLLM, TGI, llama.cpp server, OpenAI).

    The API key is read from the environment variable named by `api_key_env` only; it is never
    part of the config. `on_error`: `fail` stops after the retries, `count` records the pair as
    unparseable and goes on.
    """

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "judge"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = within(4, ge=1)
    timeout: float = within(120.0, gt=0)  # seconds per request
    max_retries: int = within(3, ge=0)  # retries after the first attempt (timeouts, 5xx, refused connections)
    backoff: float = within(1.0, ge=0)  # first retry waits this many seconds, doubling each time
    on_error: str = one_of("fail", "fail", "count")
    logprobs: bool = True  # ask for top_logprobs and read P(A/B/C) at the verdict; replies without them are parsed


@dataclass
class CalibrationConfig:
    """Reference sets of alignlab.eval.judge.calibrate: `pairs` per set (the AlpacaEval set half
    per label), each pair's question and answers within `max_chars` (keeps calibration quick),
    human pairs from the held-out split of data.<human> (kind preference)."""

    pairs: int = within(16, ge=2)
    max_chars: int = within(2000, ge=100)
    human: str = "preference"


@dataclass
class JudgeConfig:
    """Which stages are compared, on which prompts, by which judge.

    Every generative node (and the base model) answers `num_prompts` held-out prompts from the
    `prompts` dataset; each comparison "a:b" is judged on every prompt in both orders and the two
    judgements are averaged into P(a better) (alignlab.eval.judge.verdicts.swap_debiased).
    `comparisons` empty: each generative node vs its parent (the base for a root node), plus
    dpo vs ppo nodes sharing a policy. `template`: a name in the mirror's
    prompts/judge_prompts.jsonl (FastChat) or a path to a JSONL/JSON file with
    system_prompt and prompt_template ({question}, {answer_a}, {answer_b}).
    """

    enabled: bool = True
    backend: str = one_of("local", "local", "openai")
    local: ModelConfig = field(default_factory=ModelConfig)
    local_verdict: str = one_of("logprobs", "logprobs", "generate")  # see alignlab.eval.judge.local
    openai: OpenAIJudgeConfig = field(default_factory=OpenAIJudgeConfig)
    template: str = "pair-v2"
    prompts: str = "judge"  # key into the data group (kind: prompt)
    num_prompts: int = within(8, ge=1)
    comparisons: List[str] = field(default_factory=list)
    max_new_tokens: int = within(128, ge=1)  # response length of the judged models
    batch_size: int = within(4, ge=1)  # generation batch of the judged models and the local judge
    judge_max_new_tokens: int = within(192, ge=1)  # the judge's explanation + verdict
    seed: int = 1234
    mixed_precision: str = one_of("auto", *PRECISIONS)  # of response generation and the local judge
    confidence: float = within(0.95, gt=0, lt=1)  # level of the bootstrap and Wilson intervals
    tie_margin: float = within(0.05, ge=0, lt=0.5)  # |P(a better) - 0.5| <= tie_margin: the prompt is a tie
    sample_responses: int = within(3, ge=0)  # prompts shown side by side in the report
    calibrate: bool = True  # measure the judge on labelled pairs first (cached per judge)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
