"""Programmatic rewards for PPO: any callable `fn(prompts, responses) -> list[float]`, named in
`stage.ppo.reward_fn` by `_target_` (extra keys are bound as keyword arguments)."""
from __future__ import annotations

import functools
from typing import Callable, List, Sequence

from alignlab.errors import ConfigError

RewardFn = Callable[[Sequence[List[dict]], Sequence[str]], List[float]]


def target_length(prompts: Sequence[List[dict]], responses: Sequence[str], words: int = 20) -> List[float]:
    """1 at exactly `words` words, falling linearly to 0 at twice (or zero) that length, negative beyond."""
    return [1.0 - abs(len(r.split()) - words) / words for r in responses]


def resolve(spec) -> RewardFn:
    """The callable of a `{_target_: module.fn, **kwargs}` spec."""
    from hydra.utils import get_method

    spec = dict(spec)
    target = spec.pop("_target_", None)
    if not target:
        raise ConfigError("stage.ppo.reward_fn needs a '_target_' naming a Python callable")
    try:
        fn = get_method(target)
    except Exception as err:  # noqa: BLE001 - hydra raises several kinds; one message names the key
        raise ConfigError(f"stage.ppo.reward_fn._target_ '{target}' cannot be imported: {err}") from None
    return functools.partial(fn, **spec) if spec else fn
