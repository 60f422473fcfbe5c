"""Bad input corpus through the `alignlab` CLI: each case ends with exit code 1 and one
`alignlab: error:` line (or Hydra's composition error) naming the file, row or config key, and
every file of the finished node already in the stage cache stays as it was."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_PREFERENCE, TINY_SFT, alignlab_env

ALIGNLAB = str(Path(sys.executable).parent / "alignlab")
USER = {"role": "user", "content": "Name a colour."}


def _jsonl(path: Path, lines) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def _sft_file(tmp: Path, name: str, lines) -> tuple:
    return (f"data.sft.source={_jsonl(tmp / name, lines)}", "data.sft.format=messages", "data.sft.eval_fraction=0")


def _pref_file(tmp: Path, lines) -> tuple:
    return ("pipeline=sft_dpo", *TINY_PREFERENCE, f"data.preference.source={_jsonl(tmp / 'pairs.jsonl', lines)}",
            "data.preference.format=messages", "data.preference.eval_fraction=0")


def _user_pipeline(tmp: Path, nodes: str) -> tuple:
    """A pipeline file of the user's own config directory (Hydra search path)."""
    (tmp / "conf" / "pipeline").mkdir(parents=True)
    (tmp / "conf" / "pipeline" / "mine.yaml").write_text(f"name: mine\nnodes:\n  {nodes}\n")
    return (f"hydra.searchpath=[file://{tmp / 'conf'}]", "pipeline=mine")


GOOD = {"messages": [USER, {"role": "assistant", "content": "Blue."}]}
CASES = {
    "malformed JSON line": (lambda t: _sft_file(t, "a.jsonl", [GOOD, '{"messages": [', GOOD]),
                            r"a\.jsonl: line 2: malformed JSON"),
    "missing field": (lambda t: _sft_file(t, "b.jsonl", [GOOD, {"conversation": []}]),
                      r"b\.jsonl: row 2 \(line 2\): field 'messages': missing"),
    "wrong type": (lambda t: _sft_file(t, "c.jsonl", [GOOD, {"messages": [USER, {"role": "assistant", "content": 7}]}]),
                   r"c\.jsonl: row 2 \(line 2\): field 'messages\[1\]\.content': expected a string, got int"),
    "empty after filters": (lambda t: ("data.sft.max_chars=5",), r"alpaca_eval.*: no rows left after max_chars=5"),
    "chosen == rejected everywhere": (
        lambda t: (*_pref_file(t, [{side: [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "same"}]
                                    for side in ("chosen", "rejected")} for i in range(4)]),
                   "data.preference.on_bad_row=drop"),
        r"pairs\.jsonl: no valid 'preference' rows after parsing \(4 parsed, 4 bad.*same text as 'chosen'"),
    "rows over max_length": (lambda t: ("stage.sft.max_length=16", "stage.sft.on_too_long=error"),
                             r"alpaca_eval.*: train row \d+ of \d+ has \d+ tokens, more than stage\.sft\.max_length=16"),
    "unknown config key": (lambda t: ("stage.sft.lerning_rate=1",), r"Key 'lerning_rate' not in 'SFTStageConfig'"),
    "wrong config type": (lambda t: ("stage.sft.max_steps=many",),
                          r"Value 'many' of type 'str' could not be converted to Integer[\s\S]*full_key: stage\.sft\.max_steps"),
    "missing model path": (lambda t: (f"model.name_or_path={t / 'no-such-model'}",),
                           r"model path '.*no-such-model' does not exist"),
    "unknown mirror dataset": (lambda t: ("data.sft.source=alpaca_nope",),
                               r"alpaca_nope.*known mirror names: alpaca_eval_davinci003"),
    "unknown upstream": (lambda t: ("pipeline=sft_dpo", "pipeline.nodes.dpo.policy=sfft"),
                         r"pipeline\.nodes\.dpo\.policy: unknown upstream node 'sfft'"),
    "cycle": (lambda t: _user_pipeline(t, "a: {stage: sft, init: b}\n  b: {stage: sft, init: a}"),
              r"pipeline\.nodes form a cycle: (a -> b -> a|b -> a -> b)"),
}


def _snapshot(cache: Path) -> dict:
    return {str(p.relative_to(cache)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(cache.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture(scope="module")
def finished_cache(data_home, model_cache, tmp_path_factory):
    """A stage cache holding one finished SFT node (the tiny model), which no bad run may touch."""
    cache = tmp_path_factory.mktemp("cache")
    done = subprocess.run([ALIGNLAB, *TINY_SFT, "stage.sft.max_steps=2", f"paths.cache_dir={cache}",
                           f"hydra.run.dir={tmp_path_factory.mktemp('good-run')}"],
                          env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return cache, _snapshot(cache)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_clearly_and_touches_nothing(case, finished_cache, data_home, model_cache, tmp_path):
    cache, before = finished_cache
    overrides, message = CASES[case]
    cmd = [ALIGNLAB, *TINY_SFT, "stage.sft.max_steps=2", *overrides(tmp_path), f"paths.cache_dir={cache}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, env=alignlab_env(data_home, model_cache), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("alignlab: error:")]
    if errors:  # alignlab's own errors: exactly one line, no traceback
        assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert re.search(message, done.stderr), done.stderr[-3000:]
    after = _snapshot(cache)
    assert {k: after.get(k) for k in before} == before  # every finished file still there, unchanged
