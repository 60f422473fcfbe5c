"""The local judge backend: any model the shared loader can load, run in-process.

`verdict: generate` lets the judge write its explanation and verdict (FastChat style; needs a
judge that follows the `[[A]]` format). `verdict: logprobs` appends "My final verdict is: [["
to the judge's turn and compares the next-token probabilities of A and B: one forward pass per
judgement, always parseable, and a forced choice, which makes very small judges usable (a tiny
judge puts most mass on the tie option C whatever it reads). Ties then come only from the
position swap, when the two orders disagree, and that rate shows the judge's position bias.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from alignlab.errors import ConfigError
from alignlab.models.generation import chat_generate
from alignlab.models.precision import autocast

VERDICT_PREFIX = "My final verdict is: [["
OPTIONS = ("A", "B")
MODES = ("logprobs", "generate")


class LocalJudge:
    """Judges with a loaded causal LM (default: the embedded SmolLM2)."""

    def __init__(self, model_cfg, model_cache: str, max_tokens: int, batch_size: int, verdict: str,
                 precision: str = "no"):
        if verdict not in MODES:
            raise ConfigError(f"judge.local_verdict '{verdict}' is not one of {', '.join(MODES)}")
        self.model_cfg, self.model_cache = model_cfg, model_cache
        self.max_tokens, self.batch_size, self.verdict = max_tokens, batch_size, verdict
        self.precision = precision
        self._loaded = None

    @property
    def name(self) -> str:
        cfg = OmegaConf.to_container(OmegaConf.structured(self.model_cfg), resolve=True)
        return f"local:{cfg['name_or_path']}@{cfg.get('revision') or 'main'}:{cfg.get('dtype')}:{self.verdict}"

    def _model(self):
        from alignlab.models import QuantConfig, load_base, load_tokenizer

        if self._loaded is None:  # loaded on the first cache miss only
            model = load_base(self.model_cfg, QuantConfig(), self.model_cache)
            self._loaded = model.eval(), load_tokenizer(self.model_cfg, self.model_cache)
        return self._loaded

    def complete(self, conversations: List[List[Dict[str, str]]]) -> List[Optional[str]]:
        model, tokenizer = self._model()
        if self.verdict == "generate":
            return chat_generate(model, tokenizer, conversations, self.max_tokens, self.batch_size,
                                 desc="judge (local)", precision=self.precision)
        return self._by_logprobs(model, tokenizer, conversations)

    @staticmethod
    def _option_ids(tokenizer) -> List[int]:
        prefix = tokenizer.encode(VERDICT_PREFIX, add_special_tokens=False)
        ids = []
        for option in OPTIONS:
            full = tokenizer.encode(VERDICT_PREFIX + option, add_special_tokens=False)
            if full[: len(prefix)] != prefix or len(full) != len(prefix) + 1:
                raise ConfigError(f"judge.local_verdict=logprobs: the judge's tokenizer does not give '{option}' "
                                  "its own token after the verdict prefix; use judge.local_verdict=generate")
            ids.append(full[-1])
        return ids

    @torch.no_grad()
    def _by_logprobs(self, model, tokenizer, conversations) -> List[str]:
        ids = self._option_ids(tokenizer)
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        replies: List[str] = []
        try:
            for start in tqdm(range(0, len(conversations), self.batch_size), desc="judge (local)", unit="batch"):
                texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) + VERDICT_PREFIX
                         for c in conversations[start:start + self.batch_size]]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                with autocast(self.precision):
                    probs = model(**enc).logits[:, -1, :].float().softmax(-1)[:, ids]
                for p in probs:
                    best = OPTIONS[int(p.argmax())]
                    shares = " ".join(f"{o}={float(v):.3f}" for o, v in zip(OPTIONS, p / p.sum()))
                    replies.append(f"{VERDICT_PREFIX}{best}]] ({shares})")
        finally:
            tokenizer.padding_side = side
        return replies
