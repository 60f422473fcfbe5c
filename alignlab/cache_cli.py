"""`alignlab cache list|gc`: the content-addressed stage cache (each finished node's directory).

An entry `<stage>-<key>` holds COMPLETE (its node name and metrics; its mtime is the entry's
last use, refreshed on every cache hit) and config.json (the key's inputs: settings, model, data,
upstream keys, recipe and library versions). `gc` removes what no run can reuse: unfinished
`.partial` directories nobody is training in, entries keyed on library versions other than the
installed ones (`--stale`), and entries unused for `--older-than` days.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from alignlab.data.cli import human_size

COMPLETE = "COMPLETE"


def default_cache_dir() -> Path:
    base = os.environ.get("ALIGNLAB_CACHE") or str(Path.home() / ".cache" / "alignlab")
    return Path(base) / "stages"


@dataclass
class Entry:
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


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _json(path: Path) -> dict:
    """A JSON file of an entry ({} when absent); a damaged one is an error naming it."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise SystemExit(f"alignlab cache: error: {path} is not valid JSON ({err}); remove the entry "
                         f"{path.parent} by hand or move it aside")


def entries(cache_dir: Path) -> List[Entry]:
    out = []
    for path in sorted(p for p in cache_dir.iterdir() if p.is_dir()) if cache_dir.is_dir() else []:
        marker = path / COMPLETE
        complete = marker.is_file()
        out.append(Entry(path=path, stage=path.name.split("-", 1)[0], node=_json(marker).get("node") if complete else None,
                         complete=complete, size=_size(path), last_used=(marker if complete else path).stat().st_mtime,
                         config=_json(path / "config.json")))
    return out


def _locked(path: Path) -> bool:
    """A node is training in this partial directory right now (its lock is held)."""
    from filelock import FileLock, Timeout

    lock = str(path).removesuffix(".partial") + ".lock"
    try:
        with FileLock(lock, timeout=0):
            return False
    except Timeout:
        return True


def removable(entry: Entry, stale: bool, older_than: Optional[float]) -> Optional[str]:
    """Why `gc` removes this entry, or None."""
    if not entry.complete:
        return None if _locked(entry.path) else "unfinished"
    if stale:
        from alignlab.pipeline import library_versions

        recorded = entry.config.get("libraries")
        if recorded != library_versions():
            return f"keyed on other library versions ({recorded or 'not recorded'})"
    if older_than is not None and entry.age_days > older_than:
        return f"unused for {entry.age_days:.0f} days"
    return None


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignlab cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=default_cache_dir(),
                        help="the stage cache (default: $ALIGNLAB_CACHE/stages or ~/.cache/alignlab/stages)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every entry: stage, node, size, days since last use, key inputs")
    gc = sub.add_parser("gc", help="remove unfinished entries, and stale or old ones when asked")
    gc.add_argument("--stale", action="store_true", help="also entries keyed on other library versions")
    gc.add_argument("--older-than", type=float, metavar="DAYS", help="also entries unused for this many days")
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed")
    args = parser.parse_args(argv)
    found = entries(args.dir)
    if args.command == "list":
        for e in found:
            c = e.config
            inputs = (f"model {c.get('model', {}).get('name_or_path', '?')}, data {c.get('data', {}).get('source', '?')}, "
                      f"upstream {','.join(u['node'] for u in c.get('upstream', {}).values()) or '-'}")
            print(f"{e.path.name:<28} {e.stage:<8} node {e.node or '(unfinished)':<12} {human_size(e.size):>9} "
                  f"{e.age_days:6.1f} d  {inputs}")
        print(f"{len(found)} entries, {human_size(sum(e.size for e in found))} in {args.dir}")
        return 0
    freed = 0
    for e in found:
        why = removable(e, args.stale, args.older_than)
        if why:
            print(f"{'would remove' if args.dry_run else 'removing'} {e.path.name}: {why}")
            if not args.dry_run:
                shutil.rmtree(e.path)
                Path(str(e.path).removesuffix(".partial") + ".lock").unlink(missing_ok=True)
            freed += e.size
    print(f"{'would free' if args.dry_run else 'freed'} {human_size(freed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
