"""Structured config of one dataset (the `data` Hydra group)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class DataConfig:
    """Where a dataset comes from and how it is turned into canonical rows.

    `source` is a mirror dataset name (see `alignlab.data.mirror.MIRROR`), a local file
    (.json/.jsonl/.csv, optionally .gz/.bz2), or a hub id written `hub:owner/name`.
    """

    source: str = "???"
    format: Optional[str] = None  # mirror entries know theirs; required for files and hub ids
    columns: Dict[str, str] = field(default_factory=dict)  # canonical field -> source column ("columns" format)
    include: Dict[str, List[str]] = field(default_factory=dict)  # keep raw records whose field is in the list
    exclude: Dict[str, List[str]] = field(default_factory=dict)  # drop raw records whose field is in the list
    system_prompt: Optional[str] = None  # prepended as a system message when the row has none
    ties: str = "drop"  # preference sources with ties (AlpacaEval annotations): drop | error
    on_bad_row: str = "error"  # error | drop (dropped rows are counted and reported)
    dedup: bool = True  # drop rows whose canonical content repeats
    min_chars: int = 1  # every message/response must have at least this many characters
    max_chars: Optional[int] = None  # drop rows whose total text is longer
    eval_fraction: float = 0.05  # hash-based held-out fraction
    split_seed: int = 0  # salt of the split hash
    max_train_rows: Optional[int] = None
    max_eval_rows: Optional[int] = None
    hub_split: str = "train"
    hub_config: Optional[str] = None
