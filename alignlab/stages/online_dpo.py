"""Online DPO recipe (Guo et al. 2024): policy = the upstream SFT/DPO adapter (trainable) on the base ->
per prompt two completions sampled from the policy -> each pair labelled by alignlab's pairwise judge
(`labeler: judge`: the `judge` group's local model or HTTP endpoint, both orders, swap-debiased) or by a
`reward:` upstream node (`labeler: reward`: its RewardScorer, as PPO and GRPO read a completion) -> a
DPO step on the labelled pairs -> adapter, per-step label counts and every pair in labels.jsonl.

A pair is skipped, and counted, when the judge's two orders lean to different completions
(inconsistent: position bias), when it is a tie (swap-debiased P within judge.tie_margin of 0.5, or
equal rewards), or when a judge reply holds no verdict (unparseable).

Built on trl.experimental's OnlineDPOTrainer (its sampling, log-probs, frozen reference copy of the
starting policy, optimizer, checkpoints and logging), with its training step replaced: trl 1.16 labels
every pair by comparing summed per-completion rewards (a tie goes to the first completion) and averages
the loss over all pairs, so it can neither skip a pair nor take a pairwise judge (trl removed its
judges). The step here is trl's with the labeller's skips masked out of the loss.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from alignlab.stages import trl_recipe
from alignlab.stages.context import StageContext

LABELS = "labels.jsonl"
SKIPS = ("inconsistent", "tie", "unparseable")  # why a pair was not labelled


class Labeler:
    """Labels pairs of completions; called as a trl reward function over a batch's 2 x n completions (the
    first n and the last n are the two completions of each prompt): per completion its score (reward, or
    the judge's P(this one is better)), None for both completions of a pair it does not label. Every pair
    is appended to `path` (labels.jsonl) with its label or skip reason; `last` holds the batch's rows."""

    __name__ = "labeler"

    def __init__(self, path: Path):
        self.path, self.last = path, []

    def pairs(self, prompts: Sequence[list], first: Sequence[str], second: Sequence[str],
              finished: Sequence[Tuple[bool, bool]]) -> List[dict]:
        """Per pair: "scores" (first, second) or None, "skip" (a SKIPS reason) or None, and what decided it
        (`finished`: whether each completion ended with EOS)."""
        raise NotImplementedError

    def __call__(self, prompts, completions, completion_ids=None, finished=None, trainer_state=None,
                 **columns) -> List[Optional[float]]:
        from accelerate import PartialState
        from accelerate.utils import gather_object

        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        n = len(texts) // 2
        finished = list(finished) if finished is not None else [True] * len(texts)
        rows = []
        for i, judged in enumerate(self.pairs(prompts[:n], texts[:n], texts[n:], list(zip(finished[:n], finished[n:])))):
            scores = judged.pop("scores")
            chosen = None if judged["skip"] else int(scores[1] > scores[0])
            rows.append({"step": trainer_state.global_step if trainer_state else 0, "prompt": prompts[i],
                         "completions": [texts[i], texts[n + i]], "finished": [finished[i], finished[n + i]],
                         **judged, "chosen": chosen, "scores": None if scores is None else list(scores),
                         "margin": None if judged["skip"] else abs(scores[1] - scores[0])})
        self.last = gather_object(rows)  # every process's pairs, for the counts and the file
        if PartialState().is_main_process:
            with open(self.path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in self.last)
        return [None if r["chosen"] is None else r["scores"][0] for r in rows] + [
            None if r["chosen"] is None else r["scores"][1] for r in rows]


class JudgeLabeler(Labeler):
    """alignlab's pairwise judge (cfg.judge: backend, template, tie_margin; verdicts cached with the
    pipeline's judge cache), each pair judged with either completion as Assistant A."""

    __name__ = "judge"

    def __init__(self, path: Path, cfg):
        from alignlab.eval.judge.cache import JsonCache
        from alignlab.eval.judge.runner import make_backend
        from alignlab.eval.judge.templates import load_template

        super().__init__(path)
        self.judge_cfg = cfg.judge
        self.backend = make_backend(cfg.judge, cfg.paths.model_cache)
        self.template = load_template(cfg.judge.template, cfg.paths.data_home)
        self.cache = JsonCache(Path(cfg.paths.cache_dir).expanduser() / "judge")

    def pairs(self, prompts, first, second, finished) -> List[dict]:
        from alignlab.eval.judge.calibrate import judge_question
        from alignlab.eval.judge.runner import judge_all
        from alignlab.eval.judge.verdicts import swap_debiased

        jobs = []
        for prompt, a, b in zip(prompts, first, second):
            question = judge_question(prompt)
            jobs += [{"messages": self.template.messages(question, a, b)}, {"messages": self.template.messages(question, b, a)}]
        judge_all(self.backend, self.cache, self.template, self.judge_cfg, jobs)
        out = []
        for i in range(len(prompts)):
            orders = jobs[2 * i]["judgement"], jobs[2 * i + 1]["judgement"]
            row = {"verdicts": {order: {"reply": job["result"]["reply"], "probs": None if j is None else
                                        {"A": j.a, "B": j.b, "tie": j.tie}}
                                for order, job, j in zip(("first_as_a", "second_as_a"), jobs[2 * i: 2 * i + 2], orders)},
                   "scores": None, "skip": "unparseable"}
            if None not in orders:
                verdict = swap_debiased(*orders, self.judge_cfg.tie_margin)
                p = verdict["p_better"]  # P(first completion better)
                skip = "inconsistent" if not verdict["consistent"] else "tie" if verdict["outcome"] == "tie" else None
                row.update({"p_first_better": p, "scores": (p, 1 - p), "skip": skip})
            out.append(row)
        return out


class RewardLabeler(Labeler):
    """The `reward:` upstream node's scores (a completion cut off without EOS read unfinished); the higher
    score is chosen, equal scores are a tie."""

    __name__ = "reward_model"

    def __init__(self, path: Path, ctx: StageContext):
        from alignlab.stages.grpo import reward_node_fn

        super().__init__(path)
        self.score = reward_node_fn(ctx)

    def pairs(self, prompts, first, second, finished) -> List[dict]:
        both = list(prompts) * 2
        scores = self.score(both, list(first) + list(second), [f for f, _ in finished] + [s for _, s in finished])
        n = len(prompts)
        return [{"scores": (scores[i], scores[n + i]), "skip": "tie" if scores[i] == scores[n + i] else None}
                for i in range(n)]


def trl_classes():
    """(OnlineDPOConfig, OnlineDPOTrainer with the labelled, skip-aware training step; see the module doc)."""
    import warnings

    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():  # alignlab pins trl: "experimental APIs may change" adds nothing here
        warnings.simplefilter("ignore", TRLExperimentalWarning)
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    class LabelledOnlineDPOTrainer(OnlineDPOTrainer):
        def __init__(self, *args, labeler: Labeler, **kwargs):
            super().__init__(*args, reward_funcs=[labeler], **kwargs)
            self.labeler = labeler
            self.stats = {}  # trl's per-batch means; the window below averages per pair instead
            self.window: Dict[str, list] = {}

        def training_step(self, model, inputs, num_items_in_batch=None):
            model.train()
            prompts = inputs["prompt"]
            n = len(prompts)
            prompt_ids, prompt_mask, completion_ids, completion_mask, _ = self._generate(model, prompts)
            finished = torch.isin(completion_ids, torch.tensor(self.eos_token_ids, device=completion_ids.device)).any(-1)
            texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
            scores = self.labeler(prompts=2 * prompts, completions=texts, completion_ids=completion_ids.tolist(),
                                  finished=finished.tolist(), trainer_state=self.state)
            scores = torch.tensor([math.nan if s is None else s for s in scores], device=completion_ids.device)
            first, second = scores.split(n)
            labelled = torch.isfinite(first) & torch.isfinite(second)
            index = torch.arange(n, device=scores.device)
            chosen = torch.where(second > first, index + n, index)
            rejected = torch.where(second > first, index, index + n)

            logprobs = self._forward(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
            with torch.no_grad():
                ref_logprobs = self._forward(self.ref_model, prompt_ids, prompt_mask, completion_ids, completion_mask)
            mask = completion_mask.bool()
            policy, reference = (logprobs * mask).sum(1), (ref_logprobs * mask).sum(1)
            logits = (policy[chosen] - policy[rejected]) - (reference[chosen] - reference[rejected])
            # trl's online DPO losses (inline in its training step, so written out here)
            if self.args.loss_type == "sigmoid":
                losses = -F.logsigmoid(self.beta * logits)
            else:
                losses = (logits - 1 / (2 * self.beta)) ** 2
            weight = labelled.float()
            loss = (losses * weight).sum() / weight.sum().clamp(min=1)  # no labelled pair: 0, and no gradient

            with torch.no_grad():
                chosen_rewards = self.beta * (policy[chosen] - reference[chosen])[labelled]
                rejected_rewards = self.beta * (policy[rejected] - reference[rejected])[labelled]
                margins = chosen_rewards - rejected_rewards
                self._record({
                    "rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards, "rewards/margins": margins,
                    "rewards/accuracies": (margins > 0).float(),
                    "objective/kl": ((logprobs - ref_logprobs) * mask).sum(1),
                    "completions/finished": finished.float(), "completions/mean_length": mask.sum(1).float(),
                })
            # the labeller's rows are every process's already
            self.window.setdefault("pairs/label_margin", []).extend(
                r["margin"] for r in self.labeler.last if r["chosen"] is not None)
            counts = Counter(r["skip"] or "labelled" for r in self.labeler.last)
            for key in ("labelled", *SKIPS):
                self.window.setdefault(f"pairs/{key}", []).append(counts[key])
            self.accelerator.backward(loss)
            return loss.detach() / self.args.gradient_accumulation_steps

        def _record(self, values: Dict[str, torch.Tensor]) -> None:
            """Per-pair or per-completion values of every process (lists: their lengths differ)."""
            from accelerate.utils import gather_object

            for key, value in values.items():
                self.window.setdefault(key, []).extend(gather_object(value.tolist()))

        def log(self, logs, start_time=None):
            """Training logs get the window's metrics: pair counts summed, the others averaged per pair."""
            if "loss" in logs:
                for key, values in self.window.items():
                    if key.startswith("pairs/") and key != "pairs/label_margin":
                        logs[key] = sum(values)
                    elif values:
                        logs[key] = sum(values) / len(values)
                self.window = {}
            super().log(logs, start_time)

    return OnlineDPOConfig, LabelledOnlineDPOTrainer


def build_trainer(ctx: StageContext):
    from transformers import set_seed

    h = ctx.hparams
    set_seed(h.seed)
    config_cls, trainer_cls = trl_classes()
    model = trl_recipe.policy_model(ctx, "policy")
    path = ctx.work_dir / LABELS
    labeler = JudgeLabeler(path, ctx.cfg) if h.labeler == "judge" else RewardLabeler(path, ctx)
    args = trl_recipe.trainer_args(
        ctx,
        config_cls,
        held_out=False,
        beta=h.beta,
        loss_type=h.loss_type,
        max_new_tokens=h.max_new_tokens,
        max_length=h.max_prompt_length + h.max_new_tokens,  # trl cuts prompt + completion to this from the left
        temperature=h.temperature,
        disable_dropout=h.disable_dropout,
        remove_unused_columns=False,  # the rows' `prompt` reaches the training step
    )
    # Completions are sampled from the training prompts; held-out quality is the eval group's and judge's job.
    return trl_recipe.trainer(ctx, trainer_cls, model, args, held_out=False, labeler=labeler)


def label_totals(path: Path) -> Dict[str, float]:
    """Pairs of the whole run by outcome, from labels.jsonl, and the mean margin of the labelled ones."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
    counts = Counter(r["skip"] or "labelled" for r in rows)
    margins = [r["margin"] for r in rows if r["chosen"] is not None]
    return {"pairs": len(rows), "labelled_pairs": counts["labelled"], "skipped_inconsistent": counts["inconsistent"],
            "skipped_ties": counts["tie"], "skipped_unparseable": counts["unparseable"],
            **({"label_margin_mean": sum(margins) / len(margins)} if margins else {})}


def fit(ctx: StageContext, trainer) -> Dict[str, float]:
    """Train (resuming, with the pairs of the resumed steps labelled again), save; the run's label totals
    and the last logged step's DPO metrics."""
    from alignlab.tracking import cut_jsonl

    resumed = trl_recipe.checkpoint_step(trl_recipe.last_checkpoint(ctx))
    cut_jsonl(ctx.work_dir / LABELS, lambda row: row.get("step", 0) < resumed)  # labelled again after a resume
    metrics = trl_recipe.fit(ctx, trainer)
    metrics.update(label_totals(ctx.work_dir / LABELS))
    logs = [entry for entry in trainer.state.log_history if "pairs/labelled" in entry]
    if logs:
        metrics.update({f"final/{key}": value for key, value in logs[-1].items()
                        if key.startswith(("rewards/", "objective/", "completions/"))})
    return metrics


def run(ctx: StageContext) -> Dict[str, float]:
    return fit(ctx, build_trainer(ctx))
