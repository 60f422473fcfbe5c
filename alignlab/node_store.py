"""The content-addressed stage cache: one directory per finished node, keyed by what made it.

A node's key hashes its resolved settings, the model/quant/peft groups, its data fingerprint, its
upstream keys, its recipe's version and the libraries' versions. The node trains inside
`<cache>/<stage>-<key16>.partial/` under `<cache>/<stage>-<key16>.lock` (a rerun resumes from what
that directory holds) and is published by an atomic rename to `<cache>/<stage>-<key16>/` with its
COMPLETE marker (node name and metrics; its mtime is the entry's last use): a directory without
the marker is never reused. `config.json` there records the key's inputs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from alignlab.errors import AlignlabError
from alignlab.stages import spec
from alignlab.stages.context import CHECKPOINTS, Artifact

CACHE_VERSION = 1
COMPLETE = "COMPLETE"
CONFIG = "config.json"
PARTIAL = ".partial"

# Settings that cannot change a node's weights stay out of its key.
NOT_IN_KEY = {"logging_steps", "save_steps", "eval_steps", "per_device_eval_batch_size", "score_batch_size",
              "collapse_patience", "collapse_tolerance"}
# Libraries whose upgrade may change what a recipe trains: their versions are part of every key.
KEY_LIBRARIES = ("alignlab", "torch", "transformers", "peft", "trl")


class CacheEntryError(AlignlabError):
    """A damaged file in a cache entry (nothing is removed)."""


def library_versions() -> Dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in KEY_LIBRARIES}


def node_key(cfg: DictConfig, kind: str, hparams: DictConfig, data_fingerprint: str,
             upstream: Dict[str, Artifact]) -> str:
    """SHA-256 of everything that determines the node's weights, with `auto` settings resolved:
    its settings, model, data, upstream keys, the recipe's version and the libraries' versions."""
    from alignlab.models import torch_dtype
    from alignlab.models.precision import mixed_precision

    settings = {k: v for k, v in OmegaConf.to_container(hparams, resolve=True).items() if k not in NOT_IN_KEY}
    if "mixed_precision" in settings:
        settings["mixed_precision"] = mixed_precision(settings["mixed_precision"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model["dtype"] = str(torch_dtype(cfg.model))
    model.pop("device_map")
    payload = {
        "version": CACHE_VERSION,
        "stage": kind,
        "recipe_version": spec(kind).version,
        "libraries": library_versions(),
        "hparams": settings,
        "model": model,
        "quant": OmegaConf.to_container(cfg.quant, resolve=True),
        "peft": OmegaConf.to_container(cfg.peft, resolve=True),
        "data": data_fingerprint,
        "upstream": {role: art.key for role, art in sorted(upstream.items())},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_json(path: Path) -> dict:
    """A JSON file of an entry ({} when absent); a damaged one is an error naming it."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CacheEntryError(f"{path} is not valid JSON ({err}); remove the entry {path.parent} by hand "
                              "or move it aside") from None


def lock_path(entry: Path) -> Path:
    """The lock a node holds while it trains in (or publishes) this entry or its partial directory."""
    return Path(str(entry).removesuffix(PARTIAL) + ".lock")


def in_use(entry: Path) -> bool:
    """A node holds this entry's lock right now (it is training in its partial directory)."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(lock_path(entry)), timeout=0):
            return False
    except Timeout:
        return True


@dataclass
class Entry:
    """One directory of the cache, as `alignlab cache` lists it."""

    path: Path
    stage: str
    node: Optional[str]  # the node name that produced it (None: unfinished)
    complete: bool
    size: int  # bytes
    last_used: float  # epoch seconds
    config: dict  # config.json: the key's inputs

    @property
    def age_days(self) -> float:
        return (time.time() - self.last_used) / 86400


class NodeStore:
    """The cache at `root`. Under `accelerate launch` every process holds a store; `state` (an
    accelerate PartialState) makes the main process alone lock, write and publish, with every
    process meeting at each step."""

    def __init__(self, root: Path, state=None):
        self.root = Path(root)
        self.state = state
        self.main = state is None or state.is_main_process

    def _barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def entry(self, stage: str, key: str) -> Path:
        """Where a node with this key is published."""
        return self.root / f"{stage}-{key[:16]}"

    @staticmethod
    def is_complete(entry: Path) -> bool:
        return (entry / COMPLETE).is_file()

    @contextmanager
    def claim(self, entry: Path) -> Iterator[Path]:
        """Hold the entry's lock (main process) while looking it up, training and publishing it."""
        self.root.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock

        with FileLock(str(lock_path(entry))) if self.main else nullcontext():
            self._barrier()
            yield entry

    def cached(self, name: str, stage: str, key: str, entry: Path) -> Optional[Artifact]:
        """The published artifact (its last use refreshed), or None."""
        if not self.is_complete(entry):
            return None
        if self.main:
            os.utime(entry / COMPLETE)  # last use, for `alignlab cache gc --older-than`
        marker = read_json(entry / COMPLETE)
        return Artifact(node=name, stage=stage, key=key, path=entry, metrics=marker.get("metrics", {}))

    def open(self, entry: Path, config: Dict[str, Any]) -> Tuple[Path, bool]:
        """The partial directory to train in, and whether an earlier attempt left it (resume);
        `config` (the key's inputs, redacted) is written there as config.json."""
        work = entry.with_name(entry.name + PARTIAL)
        resumed = work.is_dir()
        if self.main:
            if entry.exists():  # a directory without its COMPLETE marker: never reused
                shutil.rmtree(entry)
            work.mkdir(parents=True, exist_ok=True)
            (work / CONFIG).write_text(json.dumps(config, indent=2))
        self._barrier()
        return work, resumed

    def publish(self, work: Path, entry: Path, name: str, key: str, metrics: Dict[str, Any]) -> None:
        """Drop the checkpoints, write COMPLETE and rename the partial directory into place."""
        self._barrier()
        if self.main:
            shutil.rmtree(work / CHECKPOINTS, ignore_errors=True)
            (work / COMPLETE).write_text(json.dumps({"key": key, "node": name, "metrics": metrics}, indent=2,
                                                    default=str))
            os.replace(work, entry)
        self._barrier()

    def entries(self) -> List[Entry]:
        """Every directory of the cache, finished or not."""
        out = []
        found = self.root.iterdir() if self.root.is_dir() else ()
        for path in sorted(p for p in found if p.is_dir() and not p.name.startswith(".")):  # .sync: ranks.py
            marker = path / COMPLETE
            complete = marker.is_file()
            out.append(Entry(path=path, stage=path.name.split("-", 1)[0],
                             node=read_json(marker).get("node") if complete else None, complete=complete,
                             size=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
                             last_used=(marker if complete else path).stat().st_mtime,
                             config=read_json(path / CONFIG)))
        return out

    def remove(self, entry: Path) -> None:
        shutil.rmtree(entry)
        lock_path(entry).unlink(missing_ok=True)
