"""Structured config of one dataset (the `data` Hydra group)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from alignlab.schema import one_of, within


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
    # Pairs of ranked replies (oasst): the best-ranked against each worse one, or every two of different rank
    ranked_pairs: str = one_of("best", "best", "all")
    ties: str = one_of("drop", "drop", "error")  # preference sources with ties (AlpacaEval annotations)
    on_bad_row: str = one_of("error", "error", "drop")  # drop: dropped rows are counted and reported
    dedup: bool = True  # drop rows whose canonical content repeats
    min_chars: int = within(1, ge=0)  # every message/response must have at least this many characters
    max_chars: Optional[int] = within(None, ge=1)  # drop rows whose total text is longer
    eval_fraction: float = within(0.05, ge=0, lt=1)  # held-out fraction, by a hash of each row's prompt
    split_seed: int = 0  # salt of the split hash (keep it equal across a run's datasets)
    max_train_rows: Optional[int] = within(None, ge=1)
    max_eval_rows: Optional[int] = within(None, ge=0)
    hub_split: str = "train"
    hub_config: Optional[str] = None
