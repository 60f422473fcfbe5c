"""Judge calibration: the configured judge on pairs whose better answer is known.

Two reference sets: the mirror's AlpacaEval GPT-4 annotations (ties excluded; as many pairs
where GPT-4 preferred output_1 as output_2) and human preferences from the held-out (eval) split
of `judge.calibration.human` (by default the run's preference data, which its training nodes
never read). Each pair is judged in both orders, like a comparison, with the label side as X.
Per set: agreement (share of pairs where P(label better) > 0.5; exactly 0.5 counts half) with a
Wilson interval, the same share for single judgements (before swap debiasing), mean
P(label better) with its bootstrap interval, position consistency, position bias and tie mass.
The result is cached by judge identity, template, pairs and settings: a judge is calibrated once.
A set is informative when its agreement interval lies above 0.5; the judge when every set is.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, List

from alignlab.data import load_data
from alignlab.data.mirror import mirror_path
from alignlab.data.store import data_home as resolve_data_home
from alignlab.errors import ConfigError
from alignlab.eval.judge.cache import JsonCache, content_key
from alignlab.eval.judge.verdicts import summarise, swap_debiased
from alignlab.stats import wilson_interval

log = logging.getLogger("alignlab.judge")
ANNOTATIONS = "alpaca_eval_gpt4_annotations"


def _ordered(pairs: List[dict], seed: int, max_chars: int) -> List[dict]:
    """Pairs short enough, in a seeded pseudo-random order (stable across runs)."""
    short = [p for p in pairs if len(p["question"]) + len(p["chosen"]) + len(p["rejected"]) <= max_chars]
    return sorted(short, key=lambda p: content_key([seed, p]))


def annotation_pairs(count: int, max_chars: int, seed: int, data_home) -> List[dict]:
    """`count` AlpacaEval GPT-4 annotations, half preferring output_1 and half output_2."""
    path = mirror_path(ANNOTATIONS, resolve_data_home(data_home))
    by_label: Dict[int, List[dict]] = {1: [], 2: []}
    for r in json.loads(path.read_text(encoding="utf-8")):
        if r.get("preference") in (1, 2):
            win, lose = (r["output_1"], r["output_2"]) if r["preference"] == 1 else (r["output_2"], r["output_1"])
            by_label[r["preference"]].append({"question": r["instruction"], "chosen": win, "rejected": lose})
    half = count // 2
    picked = [_ordered(by_label[label], seed, max_chars)[:half] for label in (1, 2)]
    if min(map(len, picked)) < half:
        raise ConfigError(f"judge.calibration.pairs={count}: {path} has only {min(map(len, picked))} pairs per "
                          f"label within judge.calibration.max_chars={max_chars}")
    return [p for pair in zip(*picked) for p in pair]  # alternating labels


def judge_question(prompt: List[dict]) -> str:
    """The prompt as the judge's question: the user turn, or a transcript of a longer conversation."""
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n\n".join(f"{'Human' if m['role'] == 'user' else m['role'].capitalize()}: {m['content']}" for m in prompt)


def human_pairs(cfg, count: int, max_chars: int, seed: int, data_home) -> List[dict]:
    """`count` pairs from the held-out split of data.<judge.calibration.human>."""
    key = cfg.judge.calibration.human
    if key not in cfg.data:
        raise ConfigError(f"judge.calibration.human: no dataset '{key}' in the data group (have: {', '.join(cfg.data)})")
    rows = load_data(cfg.data[key], "preference", data_home=data_home).eval
    pairs = [{"question": judge_question(r["prompt"]), "chosen": r["chosen"][-1]["content"],
              "rejected": r["rejected"][-1]["content"]} for r in rows]
    pairs = _ordered(pairs, seed, max_chars)[:count]
    if not pairs:
        raise ConfigError(f"judge.calibration.human: data.{key} has no held-out pair within "
                          f"judge.calibration.max_chars={max_chars} (its eval split holds {len(rows)} rows)")
    return pairs


def measure(pairs: List[dict], jobs: List[Dict[str, Any]], tie_margin: float, confidence: float,
            seed: int) -> Dict[str, Any]:
    """Statistics of one set from its judged jobs (order 0: the label side is Assistant A)."""
    prompts, a_shares, single = [], [], []
    for i in range(len(pairs)):
        first, second = jobs[2 * i]["judgement"], jobs[2 * i + 1]["judgement"]
        for order, j in enumerate((first, second)):
            if j is not None:
                a_shares.append(j.a_share)
                label_share = j.a_share if order == 0 else 1 - j.a_share
                single.append(1.0 if label_share > 0.5 else 0.5 if label_share == 0.5 else 0.0)
        prompts.append(None if first is None or second is None else swap_debiased(first, second, tie_margin))
    s = summarise(prompts, a_shares, confidence, seed)
    agree = [1.0 if p["p_better"] > 0.5 else 0.5 if p["p_better"] == 0.5 else 0.0 for p in prompts if p]
    ci = list(wilson_interval(sum(agree), len(agree), confidence))
    return {
        "pairs": len(pairs), "n": s["n"], "unparseable": s["unparseable"],
        "agreement": sum(agree) / len(agree) if agree else None, "agreement_ci": ci,
        "agreement_one_order": sum(single) / len(single) if single else None,
        "p_label_better": s["p_better"], "p_label_better_ci": s["p_better_ci"],
        "consistency": s["consistency"], "position_bias": s["position_bias"], "tie_mass": s["tie_mass"],
        "informative": bool(agree) and ci[0] > 0.5,
    }


def reference_sets(cfg, data_home) -> Dict[str, List[dict]]:
    """The labelled pairs of each reference set: {"question", "chosen", "rejected"}."""
    j, c = cfg.judge, cfg.judge.calibration
    return {ANNOTATIONS: annotation_pairs(c.pairs, c.max_chars, j.seed, data_home),
            f"human:{c.human}": human_pairs(cfg, c.pairs, c.max_chars, j.seed, data_home)}


def calibrate(cfg, backend, cache: JsonCache, template, data_home) -> Dict[str, Any]:
    """summary.json's `judge.calibration`: per reference set its statistics (see the module doc)."""
    from alignlab.eval.judge.runner import judge_all  # loads torch

    j = cfg.judge
    sets = reference_sets(cfg, data_home)
    key = content_key({"calibration": backend.name, "template": template.text, "sets": sets,
                       "tie_margin": j.tie_margin, "confidence": j.confidence, "seed": j.seed,
                       "max_tokens": j.judge_max_new_tokens, "precision": j.mixed_precision})
    cached = cache.get(key)
    if cached is not None:
        log.info("judge calibration of %s: cached", backend.name)
        return cached
    result: Dict[str, Any] = {"judge": backend.name, "template": template.name, "sets": {}}
    for name, pairs in sets.items():
        jobs = [{"messages": template.messages(p["question"], *answers)}
                for p in pairs for answers in ((p["chosen"], p["rejected"]), (p["rejected"], p["chosen"]))]
        judge_all(backend, cache, template, j, jobs)
        result["sets"][name] = measure(pairs, jobs, j.tie_margin, j.confidence, j.seed)
        m = result["sets"][name]
        log.info("judge calibration %s on %s: agreement %.3f [%.3f, %.3f] over %d pairs, consistency %s, "
                 "position bias %s, tie mass %s", backend.name, name, m["agreement"] or 0.0, *m["agreement_ci"],
                 m["n"], m["consistency"], m["position_bias"], m["tie_mass"])
    result["informative"] = all(m["informative"] for m in result["sets"].values())
    cache.put(key, result)
    return result
