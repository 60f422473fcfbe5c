"""Reward-KL evaluation (`eval.reward_kl`): the frontier of RLHF papers (Rafailov et al. 2023, Fig. 2;
Gao et al. 2022). The base and every generative node sample `n` responses to the same held-out
prompts with the same seeds; a reward node of the pipeline (typically a "gold" one trained on data
the policy's reward never saw) scores them, and KL(model || reference) is estimated on the
model's own samples as the sum of per-token log-ratios up to the first EOS (k1).

Sampling, scoring and reference log-probs are PPO's own (`alignlab.rl.trainer.sample`,
`split_responses`, `reference_logprobs`; `SharedBaseModel.scores`): the model, its reference and
the reward node are adapters on one shared base. Per-sample results are cached under
`<cache>/reward_kl/<key>.json`, keyed by what was evaluated and the settings that change them.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from statistics import fmean
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from alignlab.errors import ConfigError
from alignlab.record import RewardKLNode, RewardKLRecord
from alignlab.stats import bootstrap_mean_ci

RESULTS_FORMAT = 1
NOT_IN_KEY = ("enabled", "confidence", "batch_size")  # they do not change a sample or a score


def held_out_prompts(cfg, data_home: Optional[str]) -> List[List[dict]]:
    """The first `eval.reward_kl.prompts` prompts of the held-out split of `data.<eval.reward_kl.data>`."""
    from alignlab.data import load_data

    s = cfg.eval.reward_kl
    rows = load_data(cfg.data[s.data], "prompt", data_home=data_home).eval
    if len(rows) < s.prompts:
        raise ConfigError(f"eval.reward_kl.prompts: {s.prompts} held-out prompts asked, data.{s.data} holds out "
                          f"{len(rows)} (raise data.{s.data}.eval_fraction or lower eval.reward_kl.prompts)")
    return [row["prompt"] for row in rows[:s.prompts]]


def sample_and_score(cfg, prompts: Sequence[List[dict]], policy: Optional[Path], reference: Optional[Path],
                     reward: Path, desc: str = "reward_kl") -> Dict[str, list]:
    """Per sample (prompt-major, `n` per prompt): the reward node's score, the sequence KL from the
    reference, whether it ended with EOS, its length and text. `policy`/`reference`: adapter
    directories, None for the base model."""
    import torch
    from tqdm.auto import tqdm

    from alignlab.models.precision import autocast, mixed_precision
    from alignlab.rl import ppo_math as F
    from alignlab.rl.shared_model import SharedBaseModel
    from alignlab.rl.trainer import gather_logprobs, reference_logprobs, sample, split_responses
    from alignlab.stages.prompts import PromptBudget, chat_ids

    s = cfg.eval.reward_kl
    m = SharedBaseModel(cfg, policy, reward, reference="base", value_init="fresh", reference_adapter=reference)
    tok, precision = m.tokenizer, mixed_precision(s.mixed_precision)
    budget = PromptBudget(tok, s.max_prompt_length, "keep_end", "eval.reward_kl")
    rows = [p for p in prompts for _ in range(s.n)]
    ids = [budget(chat_ids(tok, p, generation_prompt=True)) for p in rows]
    out: Dict[str, list] = {"reward": [], "kl": [], "eos": [], "length": [], "response": []}
    with torch.no_grad():
        for b, start in enumerate(tqdm(range(0, len(rows), s.batch_size), desc=desc, unit="batch")):
            batch = rows[start:start + s.batch_size]
            enc, gen = sample(m.model, tok, ids[start:start + s.batch_size], s.seed * 100003 + b, s.temperature,
                              s.max_new_tokens, precision)
            r = split_responses(enc, gen, tok)
            per_pass = m.rows_per_pass(r.mask.shape[1])
            with autocast(precision):
                scores = m.scores(batch, r.texts, r.has_eos.tolist(), s.reward_max_length, per_pass)
            for i in range(0, len(batch), per_pass):
                part, attention, mask = gen[i:i + per_pass], r.attention[i:i + per_pass], r.mask[i:i + per_pass]
                with autocast(precision):
                    logits = m.response_logits(part, attention, r.context, s.temperature)
                    logprobs = gather_logprobs(logits, part[:, r.context:])
                    ref = reference_logprobs(m, part, attention, r.context, s.temperature)
                out["kl"] += F.sequence_kl(logprobs.float(), ref.float(), mask, "k1").tolist()
            out["reward"] += scores.float().tolist()
            out["eos"] += r.has_eos.tolist()
            out["length"] += r.mask.sum(-1).tolist()
            out["response"] += r.texts
    return out


def summarise(result: Dict[str, list], stage: str, reference: str, label: str, n: int, confidence: float,
              seed: int) -> RewardKLNode:
    """Means over prompts (each the mean of its `n` samples) with percentile-bootstrap intervals over prompts."""
    def per_prompt(values: list) -> List[float]:
        return [fmean(values[i:i + n]) for i in range(0, len(values), n)]

    rewards, kls = per_prompt(result["reward"]), per_prompt(result["kl"])
    return RewardKLNode(stage=stage, reference=reference, label=label,
                        reward=fmean(rewards), reward_ci=list(bootstrap_mean_ci(rewards, confidence, seed=seed)),
                        kl=fmean(kls), kl_ci=list(bootstrap_mean_ci(kls, confidence, seed=seed)),
                        prompts=len(rewards), n=len(result["reward"]), eos_fraction=fmean(map(float, result["eos"])),
                        response_length=fmean(result["length"]))


def node_label(hparams: Any) -> str:
    """A node's own settings as `key=value, ...` (what tells the points of a grid apart)."""
    plain = OmegaConf.to_container(hparams, resolve=True) if not isinstance(hparams, dict) else hparams
    return ", ".join(f"{k}={v}" for k, v in (plain or {}).items())


class RewardKLChecks:
    """Evaluates models one by one into `section`, summary.json's `reward_kl`."""

    def __init__(self, cfg, cache_dir: Path, data_home: Optional[str]):
        s = cfg.eval.reward_kl
        self.cfg, self.dir = cfg, Path(cache_dir) / "reward_kl"
        self.prompts = held_out_prompts(cfg, data_home)
        self.section = RewardKLRecord(reward=s.reward, data=s.data, prompts=len(self.prompts), samples_per_prompt=s.n,
                                      max_new_tokens=s.max_new_tokens, temperature=s.temperature, seed=s.seed,
                                      reference=s.reference, confidence=s.confidence, nodes={})

    def evaluate(self, name: str, stage: str, label: str, policy: Dict[str, Any], reference: Dict[str, Any],
                 reward: Dict[str, Any]) -> RewardKLNode:
        """`policy`, `reference`, `reward`: {"name", "identity", "adapter"} (adapter None: the base)."""
        s = self.cfg.eval.reward_kl
        settings = {k: v for k, v in OmegaConf.to_container(s, resolve=True).items() if k not in NOT_IN_KEY}
        payload = {"policy": policy["identity"], "reference": reference["identity"], "reward": reward["identity"],
                   "settings": settings, "prompts": self.prompts, "format": RESULTS_FORMAT}
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
        path = self.dir / f"{key}.json"
        if path.is_file():
            result = json.loads(path.read_text())
        else:
            result = sample_and_score(self.cfg, self.prompts, policy["adapter"], reference["adapter"], reward["adapter"],
                                      desc=f"reward_kl {name}")
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{key}.tmp-{os.getpid()}.json")
            tmp.write_text(json.dumps(result))
            os.replace(tmp, path)
        self.section.nodes[name] = point = summarise(result, stage, reference["name"], label, s.n, s.confidence, s.seed)
        return point
