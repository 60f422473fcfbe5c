"""Structured config of the `judge` Hydra group (conf/judge): pairwise LLM judging between stages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from alignlab.models.config import ModelConfig


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
    concurrency: int = 4
    timeout: float = 120.0  # seconds per request
    max_retries: int = 3  # retries after the first attempt (timeouts, 5xx, refused connections)
    backoff: float = 1.0  # first retry waits this many seconds, doubling each time
    on_error: str = "fail"  # fail | count


@dataclass
class JudgeConfig:
    """Which stages are compared, on which prompts, by which judge.

    Every generative node (and the base model) answers `num_prompts` held-out prompts from the
    `prompts` dataset; each comparison "a:b" is judged on every prompt in both orders.
    `comparisons` empty: each generative node vs its parent (the base for a root node), plus
    dpo vs ppo nodes sharing a policy. `template`: a name in the mirror's
    prompts/judge_prompts.jsonl (FastChat) or a path to a JSONL/JSON file with
    system_prompt and prompt_template ({question}, {answer_a}, {answer_b}).
    """

    enabled: bool = True
    backend: str = "local"  # local | openai
    local: ModelConfig = field(default_factory=ModelConfig)
    local_verdict: str = "logprobs"  # logprobs | generate (see alignlab.eval.judge.local)
    openai: OpenAIJudgeConfig = field(default_factory=OpenAIJudgeConfig)
    template: str = "pair-v2"
    prompts: str = "judge"  # key into the data group (kind: prompt)
    num_prompts: int = 8
    comparisons: List[str] = field(default_factory=list)
    max_new_tokens: int = 128  # response length of the judged models
    batch_size: int = 4  # generation batch of the judged models and the local judge
    judge_max_new_tokens: int = 192  # the judge's explanation + verdict
    seed: int = 1234
    mixed_precision: str = "auto"  # of response generation and the local judge (auto | no | bf16 | fp16)
    confidence: float = 0.95  # Wilson interval level of the win rates
    sample_responses: int = 3  # prompts shown side by side in the report
