"""The one generation path: PPO rollouts, judged responses, the local judge and other generative
evaluations all sample through `generate_chat`.

A batch of conversations goes through the chat template, left-padded, into `generate()` with an
explicit GenerationConfig: the checkpoint's generation_config.json (repetition penalties, n-gram
bans, top-k, ... that transformers would merge in) is set aside for the call, so what is sampled is
exactly what the config says. A LoRA adapter is merged into the base weights for the call where
that is exact (`merged_adapter`): generation then costs the base's matmuls only.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List

import torch
from tqdm.auto import tqdm

from alignlab.models.precision import autocast


def _active_lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules()
            if isinstance(m, LoraLayer) and any(a in m.lora_A for a in m.active_adapters)]


def merge_is_exact(model) -> bool:
    """Whether `model` has an active LoRA adapter on fp32 base weights. Only there is W + BA
    computed without losing the adapter's delta to rounding: a bf16/fp16 weight would round the
    small BA away in part, and a 4-bit/8-bit base would be dequantized and requantized (lossy),
    so those generate unmerged, paying the adapter's two small matmuls per layer and token."""
    layers = _active_lora_layers(model)
    return bool(layers) and all(layer.get_base_layer().weight.dtype == torch.float32 for layer in layers)


@contextmanager
def merged_adapter(model, enabled: bool = True):
    """Inside the block the active LoRA adapter is folded into the base weights (peft's
    `merge_adapter`), if `enabled` and `merge_is_exact(model)`; otherwise nothing changes.

    peft's safe merge writes W + BA into new tensors, so the original base weights are kept
    untouched and put back afterwards: the base is bit for bit what it was (peft's own unmerge,
    W + BA - BA, would drift by rounding at every merge). The block must not train: merged, a
    gradient step on the adapter would not reach the weights the forward uses."""
    if not (enabled and merge_is_exact(model)):
        yield False
        return
    bases = [layer.get_base_layer() for layer in _active_lora_layers(model)]
    originals = [(base.weight.data, base.bias.data if getattr(base, "bias", None) is not None else None)
                 for base in bases]

    def restore() -> None:
        model.unmerge_adapter()  # clears peft's merged state; the weights come from `originals`
        for base, (weight, bias) in zip(bases, originals):
            base.weight.data = weight
            if bias is not None:
                base.bias.data = bias

    try:
        model.merge_adapter(safe_merge=True)
    except ValueError as err:
        if "NaNs detected" not in str(err):
            raise
        # A diverged (non-finite) adapter: generate unmerged, so the caller's own checks (PPO's
        # finite-logits processor) name the divergence.
        restore()
        yield False
        return
    try:
        yield True
    finally:
        restore()


@torch.no_grad()
def generate_chat(model, tokenizer, conversations: List[List[Dict[str, str]]], config, precision: str = "no",
                  logits_processor=None, merge: bool = True):
    """(encoded prompts, `generate()` output) of one batch of conversations: chat template with the
    generation prompt, left padding, then `generate_encoded`."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    finally:
        tokenizer.padding_side = side
    return enc, generate_encoded(model, enc, config, precision, logits_processor, merge)


def generate_encoded(model, enc, config, precision: str = "no", logits_processor=None, merge: bool = True):
    """`generate()` output for left-padded encoded prompts `enc`: exactly `config` (a transformers
    GenerationConfig; the checkpoint's generation_config is set aside for the call), `precision`
    autocast (no | bf16 | fp16), the active LoRA adapter merged where exact unless `merge` is
    False. Seed torch first for reproducible sampling."""
    from transformers import GenerationConfig

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    checkpoint_config, lm.generation_config = lm.generation_config, GenerationConfig()
    try:
        with merged_adapter(model, merge), autocast(precision):
            return model.generate(**enc, generation_config=config, logits_processor=logits_processor)
    finally:
        lm.generation_config = checkpoint_config


def greedy_config(model, tokenizer, max_new_tokens: int):
    """Greedy decoding, stopping at the checkpoint's end-of-turn token(s) (or the tokenizer's EOS)."""
    from transformers import GenerationConfig

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    eos = getattr(lm.generation_config, "eos_token_id", None)
    return GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=eos if eos is not None else tokenizer.eos_token_id)


def chat_generate(
    model, tokenizer, conversations: List[List[Dict[str, str]]], max_new_tokens: int, batch_size: int,
    desc: str = "generate", precision: str = "no",
) -> List[str]:
    """Greedy replies to each conversation (`generate_chat` in batches), in order; `precision` is a
    resolved mixed-precision setting (no | bf16 | fp16)."""
    was_training = model.training
    model.eval()
    config = greedy_config(model, tokenizer, max_new_tokens)
    try:
        # Longest first: batches of similar length waste less padding.
        order = sorted(range(len(conversations)), key=lambda i: -len(str(conversations[i])))
        by_index: Dict[int, str] = {}
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
            batch = order[start:start + batch_size]
            enc, out = generate_chat(model, tokenizer, [conversations[i] for i in batch], config, precision)
            for i, row in zip(batch, out[:, enc["input_ids"].shape[1]:]):
                by_index[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return [by_index[i] for i in range(len(conversations))]
