"""What a setting may hold, declared next to the field of its structured config.

`one_of("a", "a", "b")` is a field whose value must be one of the listed strings (a callable
may give them, e.g. a library's enum); `within(0.1, gt=0)` a number in a range. OmegaConf
checks types at compose time; `alignlab.preflight` checks these declarations right after, before
anything loads, naming the key and what it allows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

Choices = Union[Sequence[str], Callable[[], Sequence[str]]]


@dataclass(frozen=True)
class Range:
    """Bounds of a number; `unset` values (e.g. -1 for "not set") are allowed besides the range."""

    gt: Optional[float] = None
    ge: Optional[float] = None
    lt: Optional[float] = None
    le: Optional[float] = None
    unset: tuple = ()

    def allows(self, value: float) -> bool:
        if value in self.unset:
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))

    def describe(self) -> str:
        low = f"> {self.gt:g}" if self.gt is not None else f">= {self.ge:g}" if self.ge is not None else ""
        high = f"< {self.lt:g}" if self.lt is not None else f"<= {self.le:g}" if self.le is not None else ""
        text = " and ".join(p for p in (low, high) if p) or "finite"
        if self.unset:
            text = f"{' or '.join(map(str, self.unset))} (unset) or {text}"
        return text


def one_of(default: Any, *choices: str, source: Optional[Callable[[], Sequence[str]]] = None) -> Any:
    """A string field limited to `choices` (or to what `source()` returns); None stays allowed."""
    return field(default=default, metadata={"choices": source or tuple(choices)})


def each_one_of(default_factory: Callable[[], list], *choices: str) -> Any:
    """A list field whose every item is one of `choices`."""
    return field(default_factory=default_factory, metadata={"choices": tuple(choices), "each": True})


def within(default: Any, *, gt=None, ge=None, lt=None, le=None, unset: tuple = ()) -> Any:
    """A numeric field limited to a range; None stays allowed where the type is Optional."""
    return field(default=default, metadata={"range": Range(gt, ge, lt, le, unset)})


def allowed_choices(choices: Choices) -> tuple:
    return tuple(choices() if callable(choices) else choices)
