"""Policy, reference, value and reward on ONE loaded base model (optionally 4-bit), via adapters.

Adapters on the base: `default` = the policy (trainable), `ref` = a frozen copy of the starting
policy adapter (or no adapter: the base itself is the reference), `value` = the value model's
LoRA (trainable) with a scalar head, `reward` = the reward node's LoRA (frozen) with its score
head. Only the active adapter takes part in a forward pass, so the four models cost one base's
memory plus four small adapters.

peft's `set_adapter` also flips `requires_grad`; `use()` re-applies our own trainable set
after each switch, so policy and value both train while only one is active at a time.

With gradient checkpointing the decoder layers keep only their inputs and recompute the rest in
the backward pass, which therefore has to run while the same adapter is active (`using`).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

from alignlab.errors import ModelLoadError

POLICY, REF, VALUE, REWARD = "default", "ref", "value", "reward"
# fp32 logits one no-grad rollout pass may hold ([rows, response tokens, vocabulary]; the
# log-softmax and entropy take a few times that): what `rows_per_pass` sizes the passes by.
LOGITS_BYTES_PER_PASS = 256 * 2**20
SCORE_KEY = "base_model.model.score.weight"  # the reward node's score head in its adapter file


def _head(hidden: int, weight: Optional[torch.Tensor], trainable: bool) -> torch.nn.Linear:
    head = torch.nn.Linear(hidden, 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(weight.float() if weight is not None else torch.zeros(1, hidden))
    head.weight.requires_grad_(trainable)
    return head


def chat_texts(tokenizer, prompts: Sequence[List[dict]], responses: Sequence[str],
               finished: Sequence[bool]) -> List[str]:
    """prompt + assistant response through the chat template: the text a reward model scores. A
    response cut off without EOS is left open (no end-of-turn), so it is not scored as a finished one."""
    return [tokenizer.apply_chat_template(list(p) + [{"role": "assistant", "content": r}], tokenize=False) if done
            else tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) + r
            for p, r, done in zip(prompts, responses, finished)]


class SharedBaseModel:
    """The PPO models as adapters on one base; see the module docstring."""

    def __init__(self, cfg, policy_adapter: Optional[Path], reward_adapter: Optional[Path],
                 reference: str = "sft", value_init: str = "reward", gradient_checkpointing: bool = False,
                 reference_adapter: Optional[Path] = None):
        from alignlab.models import (add_adapter, copy_lora_weights, disable_dropout, load_adapter, load_base,
                                     load_tokenizer, lora_config)
        from alignlab.stages.reward import reward_offset

        cache = cfg.paths.model_cache
        if cfg.peft.method != "lora":
            raise ModelLoadError("the PPO stage shares one base through LoRA adapters: set peft=lora")
        self.tokenizer = load_tokenizer(cfg.model, cache)
        base = load_base(cfg.model, cfg.quant, cache)
        if policy_adapter is not None:
            self.model = load_adapter(base, policy_adapter, trainable=True)
        else:
            self.model = add_adapter(base, cfg.peft, cfg.quant)
        # The reference: a frozen copy of the starting policy adapter, another adapter
        # (`reference_adapter`, e.g. the upstream node of an evaluated one), or the base.
        reference_adapter = reference_adapter or (policy_adapter if reference == "sft" else None)
        self.ref_adapter = reference_adapter is not None
        if self.ref_adapter:
            load_adapter(self.model, reference_adapter, trainable=False, adapter_name=REF)
        elif reference not in ("sft", "base"):
            raise ModelLoadError(f"stage.ppo.reference '{reference}' is not one of sft, base")
        hidden = self.model.get_base_model().config.hidden_size
        score = None
        if reward_adapter is not None:
            self.model.add_adapter(REWARD, lora_config(cfg.peft))
            copy_lora_weights(self.model, reward_adapter, REWARD)
            score = load_file(str(Path(reward_adapter) / "adapter_model.safetensors")).get(SCORE_KEY)
            if score is None:
                raise ModelLoadError(f"reward adapter '{reward_adapter}' has no score head ({SCORE_KEY})")
        self.reward_head = _head(hidden, score, trainable=False) if score is not None else None
        # A normalised reward node's shift (stage.reward.normalize_rows), subtracted from its scores.
        self.reward_offset = reward_offset(reward_adapter) if reward_adapter is not None else 0.0
        self.model.add_adapter(VALUE, lora_config(cfg.peft))
        from_reward = value_init == "reward" and reward_adapter is not None
        if from_reward:
            copy_lora_weights(self.model, reward_adapter, VALUE)
        elif value_init not in ("reward", "fresh"):
            raise ModelLoadError(f"stage.ppo.value_init '{value_init}' is not one of reward, fresh")
        self.value_head = _head(hidden, score if from_reward else None, trainable=True)
        device = next(self.model.parameters()).device
        for head in (self.reward_head, self.value_head):
            if head is not None:
                head.to(device)
        from peft.tuners.lora import LoraLayer

        self.lora_layers = [module for module in self.model.modules() if isinstance(module, LoraLayer)]
        self.adapter_params: Dict[str, List[torch.nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            for adapter in (POLICY, REF, VALUE, REWARD):
                if f".{adapter}." in name:
                    self.adapter_params.setdefault(adapter, []).append(param)
        # No dropout anywhere: rollout and update log-probs must match. Eval mode, except around
        # gradient passes when checkpointing (transformers checkpoints only modules in training
        # mode), so dropout is also switched off in every module and in the config's rates.
        disable_dropout(self.model)
        self.checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            self.model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        self.model.eval()
        self.use(POLICY)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def trainable(self) -> Dict[str, List[torch.nn.Parameter]]:
        return {"policy": self.adapter_params[POLICY],
                "value": self.adapter_params[VALUE] + [self.value_head.weight]}

    def use(self, adapter: str) -> None:
        """Make `adapter` the active one; policy and value stay trainable, the rest frozen."""
        self._check_unmerged()
        self.model.set_adapter(adapter)
        for name, params in self.adapter_params.items():
            for p in params:
                p.requires_grad_(name in (POLICY, VALUE))

    @contextmanager
    def using(self, adapter: str):
        """`adapter` active inside the block (forward and backward), then the one before it."""
        previous = self.model.active_adapter
        self.use(adapter)
        try:
            yield
        finally:
            self.use(previous)

    @contextmanager
    def reference(self):
        """The reference policy: the frozen starting adapter, or the bare base."""
        if self.ref_adapter:
            with self.using(REF):
                yield
        else:
            with self.model.disable_adapter():
                yield

    def rows_per_pass(self, response_tokens: int) -> int:
        """Rows per no-grad rollout pass (policy, reference, value, reward) whose response logits fit
        LOGITS_BYTES_PER_PASS."""
        vocab = self.model.get_base_model().get_output_embeddings().weight.shape[0]
        return max(1, LOGITS_BYTES_PER_PASS // (4 * vocab * max(1, response_tokens)))

    def _check_unmerged(self) -> None:
        """Policy, reference, value and reward passes, and adapter switches, run on unmerged adapters only
        (peft would silently unmerge on a switch; inside `merged_adapter` that is a bug)."""
        if any(layer.merged for layer in self.lora_layers):
            raise RuntimeError("a LoRA adapter is merged into the shared base for generation; policy, reference, "
                               "value and reward passes run on the unmerged adapters only")

    def _hidden(self, input_ids, attention_mask) -> torch.Tensor:
        self._check_unmerged()
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        decoder = self.model.get_base_model().get_decoder()
        checkpointed = self.checkpointing and torch.is_grad_enabled()
        if checkpointed:
            self.model.train()
        try:
            return decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        finally:
            if checkpointed:  # generation stays in eval mode, with its KV cache
                self.model.eval()

    def response_logits(self, input_ids, attention_mask, context: int, temperature: float) -> torch.Tensor:
        """Logits predicting tokens context..end of the active adapter's policy, divided by the
        sampling temperature (the distribution the rollout sampled from)."""
        hidden = self._hidden(input_ids, attention_mask)[:, context - 1:-1]
        lm = self.model.get_base_model()
        logits = lm.get_output_embeddings()(hidden).float()
        softcap = getattr(lm.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits / temperature

    def values(self, input_ids, attention_mask, context: int) -> torch.Tensor:
        """V(state before each response token), from the value adapter and head; back-propagate
        inside `using(VALUE)` when checkpointing."""
        with self.using(VALUE):
            hidden = self._hidden(input_ids, attention_mask)[:, context - 1:-1]
            return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)

    @torch.no_grad()
    def scores(self, prompts: Sequence[List[dict]], responses: Sequence[str], finished: Sequence[bool],
               max_length: int, batch_size: int) -> torch.Tensor:
        """The reward node's scalar score of each (prompt, response; `finished`: it ended with EOS),
        read like transformers' sequence classifiers: at the last token that is not padding."""
        if self.reward_head is None:
            raise ModelLoadError("this PPO model has no reward adapter")
        texts = chat_texts(self.tokenizer, prompts, responses, finished)
        side, self.tokenizer.truncation_side = self.tokenizer.truncation_side, "left"
        out = []
        try:
            with self.using(REWARD):
                for i in range(0, len(texts), batch_size):
                    enc = self.tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                                         max_length=max_length, add_special_tokens=False).to(self.device)
                    hidden = self._hidden(enc["input_ids"], enc["attention_mask"])
                    not_pad = enc["input_ids"] != self.tokenizer.pad_token_id
                    last = (torch.arange(not_pad.shape[1], device=self.device) * not_pad).argmax(-1)
                    picked = hidden[torch.arange(hidden.shape[0], device=self.device), last]
                    out.append(self.reward_head(picked.to(self.reward_head.weight.dtype)).squeeze(-1).float())
        finally:
            self.tokenizer.truncation_side = side
        return torch.cat(out) - self.reward_offset

    def save_value(self, directory: Path) -> None:
        from peft import get_peft_model_state_dict

        directory.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(self.model, adapter_name=VALUE)
        state["value_head.weight"] = self.value_head.weight.detach()
        save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "value.safetensors"))

    def load_value(self, directory: Path) -> None:
        from peft import set_peft_model_state_dict

        state = load_file(str(directory / "value.safetensors"))
        with torch.no_grad():
            self.value_head.weight.copy_(state.pop("value_head.weight"))
        set_peft_model_state_dict(self.model, state, adapter_name=VALUE)

    def save_policy(self, directory: Path) -> None:
        from peft import get_peft_model_state_dict

        directory.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(self.model, adapter_name=POLICY)
        save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "policy.safetensors"))

    def load_policy(self, directory: Path) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, load_file(str(directory / "policy.safetensors")), adapter_name=POLICY)

    def export_policy(self, directory: Path) -> None:
        """The policy alone as a peft adapter directory (what later nodes and evaluations load)."""
        self.model.save_pretrained(str(directory), selected_adapters=[POLICY])
        self.tokenizer.save_pretrained(str(directory))
