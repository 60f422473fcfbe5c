"""The local judge backend: any model the shared loader can load, run in-process.

`verdict: generate` lets the judge write its explanation and verdict (FastChat style; needs a
judge that follows the `[[A]]` format). `verdict: logprobs` appends "My final verdict is: [["
to the judge's turn and reads the next-token probabilities of A, B and C (tie), renormalised
over the three: one forward pass per judgement, always parseable. The runner averages them over
both orders (swap debiasing) and reports the tie mass.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from alignlab.errors import ConfigError
from alignlab.eval.judge.verdicts import OPTIONS
from alignlab.models.generation import chat_generate
from alignlab.models.precision import autocast

VERDICT_PREFIX = "My final verdict is: [["
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

    def complete(self, conversations: List[List[Dict[str, str]]]) -> List[Optional[dict]]:
        """Per conversation {"reply": text, "probs": {A, B, C} or None (generate: parsed later)}."""
        model, tokenizer = self._model()
        if self.verdict == "generate":
            replies = chat_generate(model, tokenizer, conversations, self.max_tokens, self.batch_size,
                                    desc="judge (local)", precision=self.precision)
            return [{"reply": r, "probs": None} for r in replies]
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
    def _by_logprobs(self, model, tokenizer, conversations) -> List[dict]:
        ids = self._option_ids(tokenizer)
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        replies: List[dict] = []
        try:
            for start in tqdm(range(0, len(conversations), self.batch_size), desc="judge (local)", unit="batch"):
                texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) + VERDICT_PREFIX
                         for c in conversations[start:start + self.batch_size]]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                with autocast(self.precision):
                    probs = model(**enc).logits[:, -1, :].float().softmax(-1)[:, ids]
                for p in probs:
                    shares = {o: float(v) for o, v in zip(OPTIONS, p / p.sum())}
                    text = " ".join(f"{o}={v:.3f}" for o, v in shares.items())
                    replies.append({"reply": f"{VERDICT_PREFIX}{OPTIONS[int(p.argmax())]}]] ({text})", "probs": shares})
        finally:
            tokenizer.padding_side = side
        return replies
