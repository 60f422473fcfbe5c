"""Pairwise judging inside a pipeline run: the base and every generative node answer the same
held-out prompts; each comparison is judged on every prompt in both orders, and the two
judgements are averaged into P(a better) (swap debiasing, alignlab.eval.judge.verdicts).

Responses are cached by (model identity, prompts, generation settings) and judgements (reply
text and, where the backend reads them, P(A/B/C)) by (judge, template, question, both answers,
order), under `<cache>/judge/`. Every judge reply is kept in the run's `judgements.jsonl`;
summary.json's `judge` section holds the per-comparison statistics.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


from alignlab.data import load_data
from alignlab.errors import ConfigError
from alignlab.eval.judge.cache import JsonCache, content_key
from alignlab.eval.judge.templates import load_template
from alignlab.eval.judge.verdicts import Judgement, summarise, swap_debiased
from alignlab.models.generation import chat_generate
from alignlab.models.precision import mixed_precision
from alignlab.record import Calibration, Comparison, JudgePrompts, JudgeRecord, from_dict
from alignlab.stages import BASE, rivals

log = logging.getLogger("alignlab.judge")


def make_backend(judge_cfg, model_cache: str):
    if judge_cfg.backend == "local":
        from alignlab.eval.judge.local import LocalJudge

        return LocalJudge(judge_cfg.local, model_cache, judge_cfg.judge_max_new_tokens, judge_cfg.batch_size,
                          judge_cfg.local_verdict, mixed_precision(judge_cfg.mixed_precision))
    if judge_cfg.backend == "openai":
        from alignlab.eval.judge.http import OpenAICompatibleJudge

        return OpenAICompatibleJudge(judge_cfg.openai, judge_cfg.judge_max_new_tokens, judge_cfg.seed)
    raise ConfigError(f"judge.backend '{judge_cfg.backend}' is not one of local, openai")


def default_comparisons(parents: Dict[str, Optional[str]], stages: Dict[str, str]) -> List[Tuple[str, str]]:
    """Each generative node vs its parent (the base for a root node); variants of one stage kind from
    the same parent against each other (e.g. DPO nodes with different betas); and every pair of
    nodes of two rival methods (the registry's `rival` kinds, e.g. every DPO node vs every PPO node)."""
    names = list(parents)
    pairs = [(node, parent or BASE) for node, parent in parents.items()]
    pairs += [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
              if stages[a] == stages[b] and parents[a] == parents[b]]
    return pairs + rivals({n: stages[n] for n in parents})


def judge_all(backend, cache: JsonCache, template, judge_cfg, jobs: List[Dict[str, Any]]) -> None:
    """Sets each job's "result" (reply text and P(A/B/C) or None) and "judgement" from its
    "messages": cached ones by (judge, template, messages, settings), the others from `backend`."""
    for job in jobs:
        job["key"] = content_key({"judge": backend.name, "format": "reply+probs", "template": template.text,
                                  "messages": job["messages"], "max_tokens": judge_cfg.judge_max_new_tokens,
                                  "precision": mixed_precision(judge_cfg.mixed_precision)})
    missing = {job["key"]: job["messages"] for job in jobs if cache.get(job["key"]) is None}  # each judged once
    log.info("judge: %d judgement(s): %d to judge", len(jobs), len(missing))
    fresh = dict(zip(missing, backend.complete(list(missing.values())))) if missing else {}
    for key, result in fresh.items():
        if result is not None:  # a failed request is not cached: a rerun retries it
            cache.put(key, result)
    for job in jobs:
        job["result"] = (fresh[job["key"]] if job["key"] in fresh else cache.get(job["key"])) or {"reply": None,
                                                                                                   "probs": None}
        job["judgement"] = Judgement.of(job["result"]["probs"], job["result"]["reply"])


class JudgeChecks:
    """Collects responses per model as the pipeline goes, then judges; `section` is summary.json's `judge`."""

    def __init__(self, cfg, cache_dir: Path, data_home: str, run_dir: Path):
        self.cfg, self.judge_cfg = cfg, cfg.judge
        self.cache = JsonCache(cache_dir / "judge")
        self.run_dir, self.data_home = run_dir, data_home
        self.template = load_template(self.judge_cfg.template, data_home)
        if self.judge_cfg.prompts not in cfg.data:
            raise ConfigError(f"judge.prompts: no dataset '{self.judge_cfg.prompts}' in the data group "
                              f"(have: {', '.join(cfg.data)})")
        data = load_data(cfg.data[self.judge_cfg.prompts], "prompt", data_home=data_home)
        rows = (data.train + data.eval)[: self.judge_cfg.num_prompts]
        self.prompts = [row["prompt"] for row in rows]
        self.questions = [next(m["content"] for m in reversed(p) if m["role"] == "user") for p in self.prompts]
        self.prompts_key = content_key(self.prompts)
        self.responses: Dict[str, List[str]] = {}
        self.parents: Dict[str, Optional[str]] = {}
        self.stages: Dict[str, str] = {}
        self.section = JudgeRecord(
            backend=self.judge_cfg.backend, judge=None, template=self.template.name,
            prompts=from_dict(JudgePrompts, {**data.report, "dataset": self.judge_cfg.prompts, "count": len(self.prompts)}),
            responses={}, comparisons={})

    def respond(self, label: str, identity: Dict[str, Any], load, stage: str = "base",
                parent: Optional[str] = None) -> None:
        """Responses of one model (base or node) to the prompts; `load()` gives (model, tokenizer) on a miss."""
        j = self.judge_cfg
        key = content_key({"what": identity, "prompts": self.prompts_key, "max_new_tokens": j.max_new_tokens,
                           "decoding": "greedy", "precision": mixed_precision(j.mixed_precision)})
        responses = self.cache.get(key)
        if responses is None:
            model, tokenizer = load()
            responses = chat_generate(model, tokenizer, self.prompts, j.max_new_tokens, j.batch_size,
                                      desc=f"responses ({label})", precision=mixed_precision(j.mixed_precision))
            self.cache.put(key, responses)
        self.responses[label] = responses
        if label != BASE:
            self.parents[label], self.stages[label] = parent, stage
        path = self.run_dir / "responses" / f"{label}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for question, prompt, response in zip(self.questions, self.prompts, responses):
                f.write(json.dumps({"model": label, "prompt": prompt, "question": question,
                                    "response": response}, ensure_ascii=False) + "\n")
        self.section.responses[label] = str(path)

    def comparisons(self) -> List[Tuple[str, str]]:
        if not self.judge_cfg.comparisons:
            return default_comparisons(self.parents, self.stages)
        pairs = []
        for spec in self.judge_cfg.comparisons:
            a, sep, b = str(spec).partition(":")
            for side in (a, b):
                if side not in self.responses:
                    raise ConfigError(f"judge.comparisons '{spec}': no generative node or base named '{side}' "
                                      f"(have: {', '.join(self.responses)})")
            if not sep or a == b:
                raise ConfigError(f"judge.comparisons '{spec}': write two different models as 'a:b'")
            pairs.append((a, b))
        return pairs

    def judge(self) -> None:
        """Judge every comparison on every prompt in both orders and tabulate the outcomes."""
        backend = make_backend(self.judge_cfg, self.cfg.paths.model_cache)
        self.section.judge = backend.name
        if self.judge_cfg.calibrate:
            from alignlab.eval.judge.calibrate import calibrate

            self.section.calibration = from_dict(
                Calibration, calibrate(self.cfg, backend, self.cache, self.template, self.data_home))
        pairs = self.comparisons()
        # (comparison, prompt, order) -> the messages the judge sees; order 0: a is Assistant A.
        jobs = []
        for a, b in pairs:
            for i, question in enumerate(self.questions):
                ra, rb = self.responses[a][i], self.responses[b][i]
                for order, (first, second) in enumerate(((ra, rb), (rb, ra))):
                    jobs.append({"a": a, "b": b, "prompt": i, "order": order,
                                 "messages": self.template.messages(question, first, second)})
        log.info("judge: %d comparison(s) x %d prompt(s) x 2 orders", len(pairs), len(self.questions))
        judge_all(backend, self.cache, self.template, self.judge_cfg, jobs)
        self._tabulate(pairs, jobs)

    def _tabulate(self, pairs, jobs) -> None:
        by = {(j["a"], j["b"], j["prompt"], j["order"]): j for j in jobs}
        path = self.run_dir / "judgements.jsonl"
        unparseable_replies = 0
        with open(path, "w", encoding="utf-8") as f:
            for a, b in pairs:
                prompts, a_shares = [], []
                for i in range(len(self.questions)):
                    first, swapped = by[(a, b, i, 0)], by[(a, b, i, 1)]
                    judged = [j["judgement"] for j in (first, swapped)]
                    a_shares += [j.a_share for j in judged if j is not None]
                    unparseable_replies += judged.count(None)
                    prompt = None if None in judged else swap_debiased(*judged, self.judge_cfg.tie_margin)
                    prompts.append(prompt)
                    f.write(json.dumps({
                        "a": a, "b": b, "prompt": i, "question": self.questions[i],
                        "judgement_a_first": _probs(judged[0]), "judgement_b_first": _probs(judged[1]),
                        **({"outcome_for_a": "unparseable", "consistent": False} if prompt is None else
                           {"p_a_better": prompt["p_better"], "tie_mass": prompt["tie_mass"],
                            "outcome_for_a": prompt["outcome"], "consistent": prompt["consistent"]}),
                        "reply_a_first": first["result"]["reply"], "reply_b_first": swapped["result"]["reply"],
                    }, ensure_ascii=False) + "\n")
                result = summarise(prompts, a_shares, self.judge_cfg.confidence, self.judge_cfg.seed)
                calibration = self.section.calibration
                self.section.comparisons[f"{a}:{b}"] = Comparison(
                    a=a, b=b, **result, judge_informative=calibration.informative if calibration else None)
                log.info("judge %s vs %s: P(%s better) %s %s; %d win / %d tie / %d loss, %d unparseable, "
                         "tie mass %s, position bias %s, consistency %s", a, b, a, _num(result["p_better"]),
                         [_num(v) for v in result["p_better_ci"] or []], result["win"], result["tie"], result["loss"],
                         result["unparseable"], _num(result["tie_mass"]), _num(result["position_bias"]),
                         _num(result["consistency"]))
        self.section.tie_margin = self.judge_cfg.tie_margin
        self.section.unparseable_replies = unparseable_replies
        self.section.judgements = str(path)


def _probs(judgement: Optional[Judgement]) -> Optional[Dict[str, float]]:
    return None if judgement is None else {"A": judgement.a, "B": judgement.b, "tie": judgement.tie}


def _num(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"
