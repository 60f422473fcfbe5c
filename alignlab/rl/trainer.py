"""The PPO loop (InstructGPT-style RLHF; "The N Implementation Details of RLHF with PPO").

Written here on torch + peft + accelerate because trl 1.x deleted its PPOTrainer. One iteration:
sample responses from the policy -> score them (reward adapter or a programmatic reward) ->
per-token KL penalty against the reference -> GAE advantages -> several epochs of clipped policy
and value updates over minibatches. Under `accelerate launch` every process rolls out its own
prompts and gradients are averaged across processes before each optimizer step (DDP's module
wrapper does not fit adapter switching on one shared base).
"""
from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from tqdm.auto import tqdm

from alignlab.errors import AlignlabError, ConfigError, TrainingDivergedError
from alignlab.rl import ppo_math as F
from alignlab.models.generation import generate_encoded, merge_is_exact
from alignlab.models.precision import autocast
from alignlab.rl.shared_model import VALUE, SharedBaseModel
from alignlab.stages.config import ppo_sampling_problems
from alignlab.stages.context import CollapseWatch
from alignlab.stages.prompts import PromptBudget, chat_ids
from alignlab.tracking import cut_jsonl

log = logging.getLogger("alignlab.ppo")


@dataclass
class Rollout:
    """One batch of sampled responses with everything the updates need (response-aligned [B, T])."""

    input_ids: torch.Tensor  # prompt (left-padded) + response (right-padded)
    attention_mask: torch.Tensor
    context: int  # prompt width: response tokens start here
    mask: torch.Tensor  # real response tokens (up to and including EOS)
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor  # [B] what the rewards are built from: after the EOS penalty and clip
    stats: Dict[str, float]
    samples: List[Dict[str, Any]]


def _finite_logits(node: str, iteration: int):
    """A logits processor that stops sampling with TrainingDivergedError when the policy's next-token
    scores are NaN/+inf (or a row has no finite score), instead of torch's sampling error."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class FiniteLogits(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if torch.isnan(scores).any() or torch.isposinf(scores).any() or torch.isneginf(scores).all(-1).any():
                raise TrainingDivergedError(f"node {node}: the policy's next-token scores are NaN/inf while sampling "
                                            f"at iteration {iteration + 1}; lower stage.ppo.learning_rate (the last "
                                            "checkpoint is kept, the node is not published)")
            return scores

    return LogitsProcessorList([FiniteLogits()])


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@dataclass
class Responses:
    """Sampled responses split from their prompts: response tokens start at `context`; tokens up to
    and including the first EOS are the response (`mask`), the rest is padding."""

    context: int  # prompt width
    mask: torch.Tensor  # [B, T] float: real response tokens
    has_eos: torch.Tensor  # [B] bool
    attention: torch.Tensor  # [B, context + T]: prompt attention, then `mask`
    texts: List[str]  # decoded responses (without EOS and padding)


@torch.no_grad()
def sample(model, tokenizer, prompt_ids: List[List[int]], seed: int, temperature: float, max_new_tokens: int,
           precision: str = "no", merge: bool = True, logits_processor=None, **outputs):
    """(encoded prompts, generate() output) of prompt token ids, sampled from exactly
    softmax(logits / temperature), the distribution the log-probs assume: torch seeded with `seed`,
    an explicit GenerationConfig without truncation or penalties through alignlab's one generation
    path (`generate_encoded`: the checkpoint's generation_config set aside, the active adapter merged
    where exact and `merge` is on). PPO's rollouts and the reward-KL evaluation both sample here."""
    from transformers import GenerationConfig

    torch.manual_seed(seed)
    device = next(model.parameters()).device
    enc = tokenizer.pad({"input_ids": prompt_ids}, padding_side="left", return_tensors="pt").to(device)
    config = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, repetition_penalty=1.0,
                              max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, **outputs)
    return enc, generate_encoded(model, enc, config, precision, logits_processor=logits_processor, merge=merge)


def split_responses(enc, out: torch.Tensor, tokenizer) -> Responses:
    """The responses of `sample`'s output `out` for the encoded prompts `enc`."""
    context = enc["input_ids"].shape[1]
    response = out[:, context:]
    is_eos = response == tokenizer.eos_token_id
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    mask = (~after_eos).float()
    texts = tokenizer.batch_decode(response.masked_fill(after_eos, tokenizer.pad_token_id), skip_special_tokens=True)
    return Responses(context, mask, is_eos.any(-1), torch.cat([enc["attention_mask"], mask.long()], dim=1), texts)


@torch.no_grad()
def reference_logprobs(m: SharedBaseModel, ids: torch.Tensor, attention: torch.Tensor, context: int,
                       temperature: float) -> torch.Tensor:
    """[rows, T] log-probs of the response tokens of `ids` under the reference policy of `m`."""
    with m.reference():
        return gather_logprobs(m.response_logits(ids, attention, context, temperature), ids[:, context:])


class PPOTrainer:
    """Runs `h.iterations` PPO iterations on a SharedBaseModel; checkpoints every `h.save_steps`."""

    def __init__(self, shared: SharedBaseModel, h, prompts: List[List[dict]], precision: str,
                 reward_fn: Optional[Callable] = None, log_fn: Callable[[Dict[str, float], int], None] = lambda m, s: None,
                 node: str = "ppo", rewind_fn: Callable[[int], None] = lambda step: None):
        from accelerate import Accelerator

        problems = ppo_sampling_problems(h, precision)
        if problems:
            raise ConfigError(problems[0])
        self.m, self.h, self.precision, self.node = shared, h, precision, node
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.reward_fn, self.log_fn, self.rewind_fn = reward_fn, log_fn, rewind_fn
        tok = shared.tokenizer
        # The policy sees each prompt's rendered ids, cut to the budget unless long prompts are dropped;
        # the reward (and samples.jsonl) read the prompt whole.
        cut = h.on_long_prompt != "drop"
        self.budget = PromptBudget(tok, h.max_prompt_length if cut else None, h.on_long_prompt, "stage.ppo")
        lengths = [len(chat_ids(tok, p, generation_prompt=True)) for p in prompts]
        self.prompts = [p for p, n in zip(prompts, lengths) if cut or n <= h.max_prompt_length]
        over = sum(n > h.max_prompt_length for n in lengths)
        if over:
            log.info("ppo: %d of %d prompts longer than max_prompt_length=%d %s", over, len(prompts),
                     h.max_prompt_length, f"cut ({h.on_long_prompt})" if cut else "left out")
        if len(self.prompts) < h.rollout_batch_size:
            raise AlignlabError(f"stage.ppo: {len(self.prompts)} prompt(s) fit max_prompt_length={h.max_prompt_length}; "
                                f"need at least rollout_batch_size={h.rollout_batch_size}")
        if h.merge_for_generation:
            how = ("merged into the fp32 base weights" if merge_is_exact(shared.model)
                   else "unmerged (the base is quantized or not fp32: merging would round)")
            log.info("ppo: rollouts generate with the policy adapter %s", how)
        groups = shared.trainable()
        self.params = groups["policy"] + groups["value"]
        # Two parameter groups, policy then value, at their base rates; `_set_lr` scales both per iteration.
        self.base_lrs = [h.learning_rate, h.value_learning_rate or h.learning_rate]
        self.optimizer = torch.optim.AdamW(
            [{"params": groups["policy"], "lr": self.base_lrs[0]}, {"params": groups["value"], "lr": self.base_lrs[1]}],
            weight_decay=h.weight_decay, betas=(h.adam_beta1, h.adam_beta2), eps=h.adam_epsilon)
        # policy_ema: the moving average of the policy weights (from the start), what the node saves.
        self.policy_params = groups["policy"]
        self.ema = [p.detach().float().clone() for p in self.policy_params] if h.policy_ema is not None else None
        if h.kl_target is not None:
            self.kl = F.AdaptiveKLController(h.kl_coef, h.kl_target, h.kl_horizon)
        else:
            self.kl = F.FixedKLController(h.kl_coef)
        self.iteration = 0
        self.resumed_from = 0  # the iteration of the checkpoint a rerun continued from
        self.history: List[Dict[str, float]] = []

    # -- rollout -----------------------------------------------------------------------------
    def _prompt_batch(self, iteration: int) -> List[List[dict]]:
        """This process's prompts of an iteration: a seeded shuffle per epoch over the prompt set."""
        world, rank, n = self.accelerator.num_processes, self.accelerator.process_index, self.h.rollout_batch_size
        start = iteration * n * world + rank * n
        order: List[int] = []
        epoch = start // len(self.prompts)
        while len(order) < start % len(self.prompts) + n:
            perm = list(range(len(self.prompts)))
            random.Random(self.h.seed + epoch).shuffle(perm)
            order += perm
            epoch += 1
        offset = start % len(self.prompts)
        return [self.prompts[i] for i in order[offset:offset + n]]

    def sample(self, prompts: List[List[dict]], iteration: int, **outputs):
        """(encoded prompts, generate() output) of an iteration's prompts (`sample`), each prompt's
        rendered ids cut to the budget, seeded per iteration and process. `outputs`: e.g. output_scores=True."""
        h, tok = self.h, self.m.tokenizer
        seed = h.seed * 100003 + iteration * self.accelerator.num_processes + self.accelerator.process_index
        ids = [self.budget(chat_ids(tok, p, generation_prompt=True)) for p in prompts]
        return sample(self.m.model, tok, ids, seed, h.temperature, h.max_new_tokens, self.precision,
                      merge=h.merge_for_generation, logits_processor=_finite_logits(self.node, iteration), **outputs)

    @torch.no_grad()
    def rollout(self, iteration: int) -> Rollout:
        h, m, tok = self.h, self.m, self.m.tokenizer
        prompts = self._prompt_batch(iteration)
        enc, out = self.sample(prompts, iteration)
        r = split_responses(enc, out, tok)
        context, mask, has_eos, attention, texts_out = r.context, r.mask, r.has_eos, r.attention, r.texts

        rows = m.rows_per_pass(mask.shape[1])
        if self.reward_fn is not None:
            scores = torch.tensor([float(s) for s in self.reward_fn(prompts, texts_out)], device=m.device)
        else:
            with autocast(self.precision):
                scores = m.scores(prompts, texts_out, has_eos.tolist(), h.reward_max_length, rows)
        raw_scores = scores
        scores = F.penalize_missing_eos(scores, has_eos, h.missing_eos_penalty, h.missing_eos_mode)
        if h.reward_clip is not None:
            scores = scores.clamp(-h.reward_clip, h.reward_clip)

        passes = [self._rollout_passes(out[i:i + rows], attention[i:i + rows], context)
                  for i in range(0, out.shape[0], rows)]
        logprobs, entropies, ref_logprobs, values = (torch.cat(t) for t in zip(*passes))
        entropy = F.masked_mean(entropies, mask)
        rewards, advantages, returns = F.rollout_targets(scores, logprobs, ref_logprobs, values, mask, self.kl.coef,
                                                         h.gamma, h.lam, h.whiten_rewards, h.whiten_advantages)
        kl_sum = F.sequence_kl(logprobs, ref_logprobs, mask, h.kl_estimator)
        stats = {
            "reward/mean": raw_scores.mean().item(), "reward/std": raw_scores.std().item() if len(raw_scores) > 1 else 0.0,
            "reward/with_kl_mean": rewards.sum(-1).mean().item(),
            "kl": kl_sum.mean().item(), "kl_coef": self.kl.coef, "entropy": entropy.item(),
            "response_length": mask.sum(-1).mean().item(), "eos_fraction": has_eos.float().mean().item(),
            "explained_variance": F.explained_variance(values, returns, mask),
        }
        samples = [{"iteration": iteration, "prompt": p[-1]["content"], "response": r, "eos": e, "score": s}
                   for p, r, e, s in zip(prompts, texts_out, has_eos.tolist(), raw_scores.tolist())]
        return Rollout(out, attention, context, mask, logprobs, values, advantages, returns, scores, stats, samples)

    @torch.no_grad()
    def _rollout_passes(self, ids: torch.Tensor, attention: torch.Tensor, context: int):
        """Policy log-probs and entropies, reference log-probs and values [rows, T] of some rollout rows:
        one forward each, on the unmerged adapters."""
        m, t = self.m, self.h.temperature
        with autocast(self.precision):
            logits = m.response_logits(ids, attention, context, t)
            logprobs, entropies = gather_logprobs(logits, ids[:, context:]), F.entropy_from_logits(logits)
            del logits
            ref_logprobs = reference_logprobs(m, ids, attention, context, t)
            values = m.values(ids, attention, context).float()
        return logprobs, entropies, ref_logprobs, values

    # -- update ------------------------------------------------------------------------------
    def _sync_gradients(self) -> None:
        """Average the trainable gradients across processes (one all-reduce of a flat buffer)."""
        if self.accelerator.num_processes == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
        offset = 0
        for p, g in zip(self.params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def _together(self, step: Callable[[], Any]) -> Any:
        """`step()`, raising on every process if it diverged on any one: the others would otherwise
        wait in the next all-reduce for a process that has stopped."""
        error, result = None, None
        try:
            result = step()
        except TrainingDivergedError as err:
            error = err
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([float(error is not None)], device=self.m.device)
            if self.accelerator.reduce(flag, reduction="sum").item() > 0 and error is None:
                error = TrainingDivergedError(f"node {self.node}: another process diverged at iteration "
                                              f"{self.iteration + 1} (its error says how); the last checkpoint is "
                                              "kept, the node is not published")
        if error is not None:
            raise error
        return result

    def update(self, r: Rollout) -> Dict[str, float]:
        h = self.h
        n = r.input_ids.shape[0]
        micro = max(1, h.mini_batch_size // h.gradient_accumulation_steps)
        sums: Dict[str, List[float]] = {}
        gen = torch.Generator().manual_seed(h.seed + self.iteration)
        for _ in range(h.ppo_epochs):
            order = torch.randperm(n, generator=gen).tolist()
            for start in range(0, n, h.mini_batch_size):
                minibatch = order[start:start + h.mini_batch_size]
                for stats in self._together(lambda: self._minibatch(r, minibatch, micro)):
                    for key, value in stats.items():
                        sums.setdefault(key, []).append(value)
                self._sync_gradients()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, h.max_grad_norm)
                sums.setdefault("grad_norm", []).append(float(grad_norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self._update_ema()
                if not all(torch.isfinite(p).all() for p in self.params):
                    raise TrainingDivergedError(f"node {self.node}: a policy/value weight became NaN/inf at "
                                                f"iteration {self.iteration + 1}; lower stage.ppo.learning_rate "
                                                "(the last checkpoint is kept, the node is not published)")
        return {k: sum(v) / len(v) for k, v in sums.items()}

    def _set_lr(self, iteration: int) -> float:
        """Both groups at their base rate x the schedule's factor of `iteration`; the policy's rate."""
        h = self.h
        factor = F.lr_factor(iteration, h.iterations, h.lr_scheduler_type, h.warmup_iterations, h.warmup_start_factor)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return self.optimizer.param_groups[0]["lr"]

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is not None:
            for average, p in zip(self.ema, self.policy_params):
                average.mul_(self.h.policy_ema).add_(p.detach().float(), alpha=1.0 - self.h.policy_ema)

    def export_policy(self, directory: Path) -> None:
        """The node's policy adapter: the EMA of the policy weights if policy_ema is set, else the
        live weights (which rollouts used; they are put back after the export)."""
        if self.ema is None:
            self.m.export_policy(directory)
            return
        live = [p.detach().clone() for p in self.policy_params]
        with torch.no_grad():
            for p, average in zip(self.policy_params, self.ema):
                p.copy_(average)
        try:
            self.m.export_policy(directory)
        finally:
            with torch.no_grad():
                for p, weights in zip(self.policy_params, live):
                    p.copy_(weights)

    def _minibatch(self, r: Rollout, minibatch: List[int], micro: int) -> List[Dict[str, float]]:
        """Accumulate a minibatch's gradients over micro-batches of `micro` samples; their stats."""
        return [self._micro_step(r, minibatch[k:k + micro], len(minibatch[k:k + micro]) / len(minibatch))
                for k in range(0, len(minibatch), micro)]

    def _micro_step(self, r: Rollout, idx: List[int], weight: float) -> Dict[str, float]:
        h, m = self.h, self.m
        ids, attn, mask = r.input_ids[idx], r.attention_mask[idx], r.mask[idx]
        with autocast(self.precision):
            logits = m.response_logits(ids, attn, r.context, h.temperature)
            logprobs = gather_logprobs(logits, ids[:, r.context:])
            pg_loss, pg = F.policy_loss(logprobs, r.logprobs[idx], r.advantages[idx], mask, h.clip_range)
        (pg_loss * weight).backward()
        with m.using(VALUE):  # the backward pass too: checkpointed layers recompute with this adapter
            with autocast(self.precision):
                values = m.values(ids, attn, r.context).float()
                vf_loss, vf = F.value_loss(values, r.values[idx], r.returns[idx], mask, h.clip_range_value)
            (h.vf_coef * vf_loss * weight).backward()
        for name, loss in (("policy", pg_loss), ("value", vf_loss)):
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"node {self.node}: {name} loss is {loss.item()} at iteration "
                                            f"{self.iteration + 1}; lower stage.ppo.learning_rate (the last "
                                            "checkpoint is kept, the node is not published)")
        return {"loss/policy": pg_loss.item(), "loss/value": vf_loss.item(), "clipfrac": pg["clipfrac"],
                "approx_kl": pg["approx_kl"], "value_clipfrac": vf["clipfrac"]}

    # -- loop and checkpoints --------------------------------------------------------------------
    def train(self, checkpoint_dir: Path, samples_path: Path) -> Dict[str, float]:
        h = self.h
        self._resume(checkpoint_dir)
        main = self.accelerator.is_main_process
        if main:  # an earlier attempt logged past its checkpoint (or had none): those rows come again
            self.rewind_fn(self.iteration)
            cut_jsonl(samples_path, lambda row: row["iteration"] < self.iteration)
        collapse = CollapseWatch(self.node, "ppo", h.collapse_patience, tolerance=0.0)
        bar = tqdm(range(self.iteration, h.iterations), desc="ppo", unit="iter", disable=not main)
        for iteration in bar:
            self.iteration = iteration
            start = time.time()
            lr = self._set_lr(iteration)
            rollout = self._together(lambda: self.rollout(iteration))
            stats = {**rollout.stats, **self.update(rollout), "learning_rate": lr}
            self._together(lambda: self._check_reward(stats["reward/mean"]))
            stats = self._mean_across_processes(stats)
            self.kl.update(stats["kl"], h.rollout_batch_size * self.accelerator.num_processes)
            stats["time/iteration"] = time.time() - start
            stats["episodes"] = (iteration + 1) * h.rollout_batch_size * self.accelerator.num_processes
            self.history.append(stats)
            bar.set_postfix(reward=f"{stats['reward/mean']:.3f}", kl=f"{stats['kl']:.3f}")
            logged = (iteration + 1) % h.logging_steps == 0 or iteration + 1 == h.iterations
            if logged:  # stats are the same on every process: all stop together
                collapse.update(iteration + 1, grad_norm=stats["grad_norm"], learning_rate=lr)
            if main:
                if logged:
                    self.log_fn(stats, iteration + 1)
                with open(samples_path, "a", encoding="utf-8") as f:
                    for sample in rollout.samples[: h.sample_responses]:
                        f.write(json.dumps(sample, ensure_ascii=False) + "\n")
            self.iteration = iteration + 1
            if self.iteration % h.save_steps == 0 and self.iteration < h.iterations:
                self._save(checkpoint_dir)
        return self.history[-1] if self.history else {}

    def _check_reward(self, reward: float) -> None:
        if not math.isfinite(reward):
            raise TrainingDivergedError(f"node {self.node}: reward is {reward} at iteration {self.iteration + 1} "
                                        "(the last checkpoint is kept, the node is not published)")

    def _mean_across_processes(self, stats: Dict[str, float]) -> Dict[str, float]:
        if self.accelerator.num_processes == 1:
            return stats
        keys = sorted(stats)
        values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.m.device)
        reduced = self.accelerator.reduce(values, reduction="mean").tolist()
        return dict(zip(keys, reduced))

    def _save(self, checkpoint_dir: Path) -> None:
        """iter-N/: policy and value weights, optimizer, policy EMA, KL coefficient, history (main process)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            target = checkpoint_dir / f"iter-{self.iteration}"
            tmp = target.with_name(target.name + ".tmp")
            self.m.save_policy(tmp)
            self.m.save_value(tmp)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            if self.ema is not None:
                torch.save(self.ema, tmp / "ema.pt")
            (tmp / "state.json").write_text(json.dumps({"iteration": self.iteration, "kl_coef": self.kl.coef,
                                                        "history": self.history}))
            tmp.rename(target)
            for old in checkpoint_dir.glob("iter-*"):
                if old != target and not old.name.endswith(".tmp"):
                    shutil.rmtree(old)
        self.accelerator.wait_for_everyone()

    def _resume(self, checkpoint_dir: Path) -> None:
        done = sorted(checkpoint_dir.glob("iter-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))
        if not done:
            return
        last = done[-1]
        self.m.load_policy(last)
        self.m.load_value(last)
        self.optimizer.load_state_dict(torch.load(last / "optimizer.pt", weights_only=True))
        if self.ema is not None:
            if not (last / "ema.pt").is_file():
                raise AlignlabError(f"node {self.node}: checkpoint {last} has no policy EMA (ema.pt) but "
                                    "stage.ppo.policy_ema is set; remove the checkpoint to start over")
            self.ema = [t.to(self.m.device) for t in torch.load(last / "ema.pt", weights_only=True)]
        state = json.loads((last / "state.json").read_text())
        self.iteration, self.kl.coef, self.history = state["iteration"], state["kl_coef"], state["history"]
        self.resumed_from = self.iteration
        log.info("ppo: resumed from %s (iteration %d)", last, self.iteration)
