"""Data fetched on demand: the package manifest, the download cache and `alignlab data`, all
against a real HTTP server on 127.0.0.1 that serves the mirror in place and can misbehave."""
from __future__ import annotations

import csv
import http.server
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, TINY_SFT

from alignlab.data import MIRROR, DataError
from alignlab.data.store import RAW_URL, data_home, manifest, sha256_of

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
VICUNA = "prompts/vicuna_question.jsonl"


class MirrorServer(http.server.ThreadingHTTPServer):
    """Serves a mirror directory; `faults[path]` is a list of misbehaviours used up one per GET:
    '404', '500', 'stall' (headers, then silence), 'corrupt' (one byte changed), 'slow' (1 s pause)."""

    daemon_threads = True

    def __init__(self, root: Path):
        self.root, self.faults, self.gets = root, {}, Counter()
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - the http.server API
        path = self.path.lstrip("/")
        self.server.gets[path] += 1
        pending = self.server.faults.get(path)
        fault = pending.pop(0) if pending else None
        local = self.server.root / path
        if fault in ("404", "500") or not local.is_file():
            self.send_error(int(fault or 404))
            return
        body = local.read_bytes()
        if fault == "corrupt":
            body = bytes([body[0] ^ 1]) + body[1:]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "stall":
            time.sleep(5)
            return
        if fault == "slow":
            time.sleep(1)
        self.wfile.write(body)


@pytest.fixture
def server(data_home):
    srv = MirrorServer(data_home)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def fetch_env(server, tmp_path, monkeypatch):
    """This process and its children: no mirror, an empty download cache, the local server."""
    env = {"ALIGNLAB_DATA_URL": f"http://127.0.0.1:{server.server_port}", "ALIGNLAB_CACHE": str(tmp_path / "alcache"),
           "HF_HUB_OFFLINE": "0", "ALIGNLAB_DATA_TIMEOUT": "2", "ALIGNLAB_DATA_RETRIES": "3"}
    monkeypatch.delenv("ALIGNLAB_DATA_HOME", raising=False)
    monkeypatch.delenv("ALIGNLAB_OFFLINE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return tmp_path / "alcache" / "data"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".fetch" not in p.parts}


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([ALIGNLAB, *args], env=dict(os.environ), capture_output=True, text=True, timeout=600, **kw)


# --- the manifest -----------------------------------------------------------------------------

def test_manifest_is_the_mirrors_and_names_every_file_alignlab_reads(data_home):
    if not (data_home / "MANIFEST.tsv").is_file():
        pytest.skip(f"{data_home} is a download cache, not a mirror with its MANIFEST.tsv")
    with (data_home / "MANIFEST.tsv").open(newline="") as f:
        mirror = {r["path"]: r for r in csv.DictReader(f, delimiter="\t")}
    ours = manifest()
    assert len(ours) == len(mirror) == 139
    for path, row in mirror.items():
        item = ours[path]
        assert (item.repository, item.commit, item.path_in_repository, item.sha256, item.bytes) == (
            row["repository"], row["commit"], row["path_in_repository"], row["sha256"], int(row["bytes"]))
        assert item.license
    assert ours["sft/codealpaca/code_alpaca_2k.json"].license == "CC BY-NC 4.0"
    read = [e.path for e in MIRROR.values()] + ["prompts/judge_prompts.jsonl"]
    for task in (REPO / "alignlab" / "eval" / "tasks").rglob("alignlab_*.yaml"):
        read += re.findall(r"^\s+\w+: (benchmarks/\S+)$", task.read_text(), re.M)
    assert len(read) > 100 and not set(read) - set(ours)
    item = ours[VICUNA]
    assert item.url() == RAW_URL.format(repository=item.repository, commit=item.commit,
                                        path_in_repository=item.path_in_repository)
    assert item.commit in item.url() and re.fullmatch(r"[0-9a-f]{40}", item.commit)


def test_a_mirror_home_is_read_only_and_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_DATA_HOME", str(tmp_path))
    home = data_home()
    assert not home.fetches and home.root == tmp_path.resolve()
    with pytest.raises(DataError, match=rf"{VICUNA} is missing from the data home .*ALIGNLAB_DATA_HOME.*"
                                        rf"alignlab data fetch {VICUNA}"):
        home.file(VICUNA)
    assert not any(tmp_path.iterdir())


# --- downloads ----------------------------------------------------------------------------------

def test_run_fetches_only_the_files_it_uses(fetch_env, server, model_cache, tmp_path):
    done = _cli(*TINY_SFT, "stage.sft.max_steps=2", f"paths.model_cache={model_cache}",
                f"paths.cache_dir={tmp_path / 'stages'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-3000:]
    used = MIRROR["alpaca_eval_gpt4"].path
    assert _files(fetch_env) == {used}
    assert dict(server.gets) == {used: 1}
    assert sha256_of(fetch_env / used) == manifest()[used].sha256


def test_forgetting_score_with_fetched_data_equals_the_mirrors(fetch_env, data_home, model_cache, tmp_path):
    from alignlab.eval import ForgettingConfig, compact_scores, evaluate_model
    from alignlab.models import ModelConfig, QuantConfig, load_base, load_tokenizer

    tiny = ModelConfig(name_or_path="embedded:tiny-llama")
    model, tokenizer = load_base(tiny, QuantConfig(), model_cache), load_tokenizer(tiny, model_cache)
    cfg = ForgettingConfig(tasks=["alignlab_arc_easy"], limit=10, batch_size=8, seed=1)
    fetched = evaluate_model(model, tokenizer, cfg, None, tmp_path / "fetched.json")
    assert _files(fetch_env) == {"benchmarks/arc/ARC-Easy-Test.jsonl", "benchmarks/arc/ARC-Easy-Dev.jsonl"}  # dev: few-shot
    mirror = evaluate_model(model, tokenizer, cfg, str(data_home), tmp_path / "mirror.json")
    assert (compact_scores(mirror), mirror["samples"]) == (compact_scores(fetched), fetched["samples"])


def test_corrupt_download_names_both_digests_and_keeps_nothing(fetch_env, server):
    server.faults[VICUNA] = ["corrupt"]
    expected = manifest()[VICUNA].sha256
    with pytest.raises(DataError, match=rf"checksum mismatch for {VICUNA}: expected sha256 {expected}, "
                                        r"got (?!" + expected + r")[0-9a-f]{64}"):
        data_home().file(VICUNA)
    assert _files(fetch_env) == set() and not list(fetch_env.rglob("*.part"))


def test_verify_names_a_corrupted_file(fetch_env):
    path = data_home().file(VICUNA)
    assert _cli("data", "verify").returncode == 0
    path.write_bytes(path.read_bytes()[:-1] + b"?")
    done = _cli("data", "verify")
    assert done.returncode == 1
    assert re.search(rf"alignlab: error: 1 of 1 data file\(s\) .* SHA-256: {re.escape(str(path))}", done.stderr)


def test_server_errors_404_500_and_a_stall(fetch_env, server):
    home = data_home()
    server.faults[VICUNA] = ["404"]
    with pytest.raises(DataError, match=rf"http://127\.0\.0\.1:\d+/{VICUNA}: HTTP 404"):
        home.file(VICUNA)
    server.faults[VICUNA] = ["500"]
    assert home.file(VICUNA).is_file() and server.gets[VICUNA] == 3  # 404, then 500 retried to 200
    mtbench = MIRROR["mtbench"].path
    server.faults[mtbench] = ["stall"] * 3
    start = time.monotonic()
    with pytest.raises(DataError, match=rf"could not fetch {mtbench} after 3 attempt\(s\) \(timeout 2 s\)"):
        home.file(mtbench)
    assert time.monotonic() - start < 3 * 2 + 1 + 2 + 5  # three 2 s timeouts and 1 + 2 s of backoff
    assert not (fetch_env / mtbench).exists() and not list(fetch_env.rglob("*.part"))


def test_two_processes_fetch_one_file_once(fetch_env, server):
    server.faults[VICUNA] = ["slow", "slow"]
    procs = [subprocess.Popen([ALIGNLAB, "data", "fetch", "vicuna"], env=dict(os.environ),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert server.gets[VICUNA] == 1
    assert sha256_of(fetch_env / VICUNA) == manifest()[VICUNA].sha256


def test_offline_and_missing_fails_in_one_line(fetch_env, server, monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNLAB_OFFLINE", "1")
    done = _cli(*TINY_SFT, f"paths.cache_dir={tmp_path / 'stages'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("alignlab: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    used = MIRROR["alpaca_eval_gpt4"].path
    assert re.search(rf"{used} is not in .* downloads are off \(ALIGNLAB_OFFLINE=1\); run `alignlab data fetch "
                     rf"{used}`.*ALIGNLAB_DATA_HOME", errors[0])
    assert not server.gets and _files(fetch_env) == set()


def test_data_list_where_and_fetch_by_folder(fetch_env, server):
    done = _cli("data", "fetch", "benchmarks/piqa")
    assert done.returncode == 0, done.stderr
    assert _files(fetch_env) == {"benchmarks/piqa/valid.jsonl", "benchmarks/piqa/valid-labels.lst"}
    listing = _cli("data", "list").stdout
    assert re.search(r"^benchmarks/piqa\s+-\s+2 file\(s\)\s+[\d.]+ [KM]B\s+AFL-3\.0\s+present$", listing, re.M)
    assert re.search(r"^code_alpaca\s+alpaca\s+.*CC BY-NC 4\.0\s+missing$", listing, re.M)
    assert re.search(r"^benchmarks/mmlu/test\s+-\s+57 file\(s\)", listing, re.M)
    assert str(fetch_env) in _cli("data", "where").stdout
    bad = _cli("data", "fetch", "no_such_set")
    assert bad.returncode == 1 and "alignlab: error: 'no_such_set' is neither" in bad.stderr
    assert "alignlab data list|fetch|verify|where" in _cli("--help").stdout
