"""Pairwise judging inside a pipeline run: the base and every generative node answer the same
held-out prompts; each comparison is judged on every prompt in both orders.

Responses are cached by (model identity, prompts, generation settings) and verdicts by
(judge, template, question, both answers, order), under `<cache>/judge/`. Every judge reply is
kept in the run's `judgements.jsonl`; summary.json's `judge` section holds the tallies.
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
from alignlab.eval.judge.verdicts import combine, parse_verdict, tally
from alignlab.models.generation import chat_generate
from alignlab.models.precision import mixed_precision
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


class JudgeChecks:
    """Collects responses per model as the pipeline goes, then judges; `section` is summary.json's `judge`."""

    def __init__(self, cfg, cache_dir: Path, data_home: str, run_dir: Path):
        self.cfg, self.judge_cfg = cfg, cfg.judge
        self.cache = JsonCache(cache_dir / "judge")
        self.run_dir = run_dir
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
        self.section: Dict[str, Any] = {
            "backend": self.judge_cfg.backend, "judge": None, "template": self.template.name,
            "prompts": {"dataset": self.judge_cfg.prompts, "count": len(self.prompts), **data.report},
            "responses": {}, "comparisons": {},
        }

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
        self.section["responses"][label] = str(path)

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
        self.section["judge"] = backend.name
        pairs = self.comparisons()
        # (comparison, prompt, order) -> the messages the judge sees; order 0: a is Assistant A.
        jobs = []
        for a, b in pairs:
            for i, question in enumerate(self.questions):
                ra, rb = self.responses[a][i], self.responses[b][i]
                for order, (first, second) in enumerate(((ra, rb), (rb, ra))):
                    messages = self.template.messages(question, first, second)
                    key = content_key({"judge": backend.name, "template": self.template.text, "messages": messages,
                                       "max_tokens": self.judge_cfg.judge_max_new_tokens,
                                       "precision": mixed_precision(self.judge_cfg.mixed_precision)})
                    jobs.append({"a": a, "b": b, "prompt": i, "order": order, "messages": messages, "key": key})
        missing = [job for job in jobs if self.cache.get(job["key"]) is None]
        log.info("judge: %d comparison(s) x %d prompt(s) x 2 orders: %d cached, %d to judge",
                 len(pairs), len(self.questions), len(jobs) - len(missing), len(missing))
        if missing:
            replies = backend.complete([job["messages"] for job in missing])
            for job, reply in zip(missing, replies):
                if reply is not None:  # a failed request is not cached: a rerun retries it
                    self.cache.put(job["key"], {"reply": reply})
                job["reply"] = reply
        for job in jobs:
            if "reply" not in job:
                job["reply"] = self.cache.get(job["key"])["reply"]
            job["verdict"] = parse_verdict(job["reply"])
        self._tabulate(pairs, jobs)

    def _tabulate(self, pairs, jobs) -> None:
        by = {(j["a"], j["b"], j["prompt"], j["order"]): j for j in jobs}
        path = self.run_dir / "judgements.jsonl"
        unparseable_replies = 0
        with open(path, "w", encoding="utf-8") as f:
            for a, b in pairs:
                outcomes = []
                for i in range(len(self.questions)):
                    first, swapped = by[(a, b, i, 0)], by[(a, b, i, 1)]
                    outcome = combine(first["verdict"], swapped["verdict"])
                    outcomes.append(outcome)
                    unparseable_replies += (first["verdict"] is None) + (swapped["verdict"] is None)
                    f.write(json.dumps({
                        "a": a, "b": b, "prompt": i, "question": self.questions[i],
                        "verdict_a_first": first["verdict"], "verdict_b_first": swapped["verdict"],
                        "outcome_for_a": outcome[0], "consistent": outcome[1],
                        "reply_a_first": first["reply"], "reply_b_first": swapped["reply"],
                    }, ensure_ascii=False) + "\n")
                result = tally(outcomes, self.judge_cfg.confidence)
                self.section["comparisons"][f"{a}:{b}"] = {"a": a, "b": b, **result}
                log.info("judge %s vs %s: %d win / %d tie / %d loss, %d unparseable, consistency %s",
                         a, b, result["win"], result["tie"], result["loss"], result["unparseable"],
                         result["consistency"])
        self.section["unparseable_replies"] = unparseable_replies
        self.section["judgements"] = str(path)
