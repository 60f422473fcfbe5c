"""Batched chat generation with a loaded model (judged responses, the local judge)."""
from __future__ import annotations

from typing import Dict, List

import torch
from tqdm.auto import tqdm

from alignlab.models.precision import autocast


@torch.no_grad()
def chat_generate(
    model, tokenizer, conversations: List[List[Dict[str, str]]], max_new_tokens: int, batch_size: int,
    desc: str = "generate", precision: str = "no",
) -> List[str]:
    """Greedy replies to each conversation (chat template, left-padded batches), in order;
    `precision` is a resolved mixed-precision setting (no | bf16 | fp16)."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    replies: List[str] = []
    try:
        # Longest first: batches of similar length waste less padding.
        order = sorted(range(len(conversations)), key=lambda i: -len(str(conversations[i])))
        by_index: Dict[int, str] = {}
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
            batch = order[start:start + batch_size]
            texts = [tokenizer.apply_chat_template(conversations[i], tokenize=False, add_generation_prompt=True)
                     for i in batch]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with autocast(precision):
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            for i, row in zip(batch, out[:, enc["input_ids"].shape[1]:]):
                by_index[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
        replies = [by_index[i] for i in range(len(conversations))]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return replies
