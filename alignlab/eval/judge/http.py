"""The OpenAI-compatible judge backend: chat completions over HTTP.

trl 1.x removed its judges (OpenAIPairwiseJudge among them), so alignlab talks to the endpoint
itself. Any server speaking the OpenAI chat completions API works: vLLM, TGI, the llama.cpp
server, OpenAI. Timeouts, refused connections, 429 and 5xx replies are retried with exponential
backoff; other 4xx replies are not. The API key is read from the environment per call and is
never logged nor kept on the judge. With `logprobs` on, each request asks for the top
log-probabilities of every generated token (OpenAI `logprobs`/`top_logprobs`; vLLM and the
llama.cpp server serve them): the probabilities of A, B and C at the verdict letter after the
reply's last "[[" become the judgement; a reply without them is parsed.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Dict, List, Optional

import openai
from tqdm.auto import tqdm

from alignlab.errors import AlignlabError, ConfigError
from alignlab.eval.judge.config import OpenAIJudgeConfig
from alignlab.eval.judge.verdicts import OPTIONS

log = logging.getLogger("alignlab.judge")
ON_ERROR = ("fail", "count")
KEYLESS = "EMPTY"  # sent when the key variable is unset: local servers accept any key
MAX_ERROR_CHARS = 300
TOP_LOGPROBS = 20  # the OpenAI API's maximum

Conversation = List[Dict[str, str]]


MISCONFIGURED = (401, 403, 404)  # always fatal, whatever judge.openai.on_error says


class JudgeEndpointError(AlignlabError):
    """The judge endpoint kept failing after all retries (or refused the request outright)."""


def _retryable(err: openai.APIError) -> bool:
    if isinstance(err, (openai.APIConnectionError, openai.RateLimitError)):  # includes APITimeoutError
        return True
    return isinstance(err, openai.APIStatusError) and err.status_code >= 500


def _describe(err: Exception, api_key: str) -> str:
    """One line naming the error, with the key masked should the server echo it."""
    text = f"{type(err).__name__}: {err}".replace(api_key, "***")
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def _reply_text(response) -> str:
    """The assistant text of a reply; "" when it has no choices or no content."""
    choices = getattr(response, "choices", None) or []
    message = getattr(choices[0], "message", None) if choices else None
    return getattr(message, "content", None) or ""


def verdict_probs(response) -> Optional[Dict[str, float]]:
    """P(A), P(B), P(C) renormalised over the three at the verdict letter (the token after the
    reply's last "[["), from its top log-probabilities; None when the reply has none there."""
    choices = getattr(response, "choices", None) or []
    logprobs = getattr(choices[0], "logprobs", None) if choices else None
    tokens = getattr(logprobs, "content", None) or []
    text, found = "", None
    for token in tokens:
        if text.rstrip().endswith("[[") and token.token.strip() in OPTIONS:
            found = token
        text += token.token
    if found is None:
        return None
    mass = {o: 0.0 for o in OPTIONS}
    for top in found.top_logprobs or []:
        if top.token.strip() in mass:
            mass[top.token.strip()] += math.exp(top.logprob)
    total = sum(mass.values())
    return {o: m / total for o, m in mass.items()} if total > 0 else None


class OpenAICompatibleJudge:
    """Judges through an OpenAI-compatible `/chat/completions` endpoint (greedy, seeded)."""

    def __init__(self, cfg: OpenAIJudgeConfig, max_tokens: int, seed: int):
        if cfg.on_error not in ON_ERROR:
            raise ConfigError(f"judge.openai.on_error '{cfg.on_error}' is not one of {', '.join(ON_ERROR)}")
        self.cfg, self.max_tokens, self.seed = cfg, max_tokens, seed

    @property
    def name(self) -> str:
        return f"openai:{self.cfg.base_url}:{self.cfg.model}"

    def complete(self, conversations: List[Conversation]) -> List[Optional[dict]]:
        """Per conversation, in order, {"reply": text, "probs": verdict_probs or None}; None for a
        failure under on_error=count."""
        api_key = os.environ.get(self.cfg.api_key_env) or KEYLESS
        stop = threading.Event()  # set on a fatal failure: the other workers make no new attempts
        with openai.OpenAI(base_url=self.cfg.base_url, api_key=api_key, timeout=self.cfg.timeout,
                           max_retries=0) as client, ThreadPoolExecutor(self.cfg.concurrency) as pool:
            futures = [pool.submit(self._complete_one, client, c, stop) for c in conversations]
            try:
                for future in tqdm(as_completed(futures), total=len(futures), desc="judge (http)", unit="req"):
                    future.result()
            except BaseException:
                stop.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return [f.result() for f in futures]

    def _complete_one(self, client: openai.OpenAI, messages: Conversation, stop: threading.Event) -> Optional[dict]:
        attempts = 0
        while True:
            attempts += 1
            try:
                return self._request(client, messages)
            except openai.APIError as err:  # handled outside: the raised error must not chain it (headers)
                error, retry = _describe(err, client.api_key), _retryable(err)
                misconfigured = isinstance(err, openai.APIStatusError) and err.status_code in MISCONFIGURED
            if not retry or attempts > self.cfg.max_retries or stop.is_set():
                return self._give_up(attempts, error, misconfigured)
            self._wait(attempts, error)

    def _request(self, client: openai.OpenAI, messages: Conversation) -> dict:
        extra = {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if self.cfg.logprobs else {}
        response = client.chat.completions.create(model=self.cfg.model, messages=messages, temperature=0.0,
                                                  max_tokens=self.max_tokens, seed=self.seed, **extra)
        return {"reply": _reply_text(response), "probs": verdict_probs(response) if self.cfg.logprobs else None}

    def _wait(self, attempts: int, error: str) -> None:
        delay = self.cfg.backoff * 2 ** (attempts - 1)
        log.warning("judge endpoint %s: %s; retry %d/%d in %.2fs", self.cfg.base_url, error, attempts,
                    self.cfg.max_retries, delay)
        time.sleep(delay)

    def _give_up(self, attempts: int, error: str, misconfigured: bool) -> None:
        message = (f"judge endpoint {self.cfg.base_url} (model '{self.cfg.model}') failed after {attempts} "
                   f"attempt{'s' if attempts > 1 else ''}; last error: {error}")
        if self.cfg.on_error == "fail" or misconfigured:  # a bad key, URL or model fails every request
            raise JudgeEndpointError(message)
        log.warning("%s; counted as unparseable (judge.openai.on_error=count)", message)
        return None
