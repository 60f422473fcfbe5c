"""`alignlab cache list|gc`: the content-addressed stage cache (each finished node's directory).

An entry `<stage>-<key>` holds COMPLETE (its node name and metrics; its mtime is the entry's
last use, refreshed on every cache hit) and config.json (the key's inputs: settings, model, data,
upstream keys, recipe and library versions). `gc` removes what no run can reuse: unfinished
`.partial` directories nobody is training in, entries keyed on library versions other than the
installed ones (`--stale`), and entries unused for `--older-than` days.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

from alignlab.data.cli import human_size
from alignlab.node_store import CacheEntryError, Entry, NodeStore, in_use, library_versions


def default_cache_dir() -> Path:
    base = os.environ.get("ALIGNLAB_CACHE") or str(Path.home() / ".cache" / "alignlab")
    return Path(base) / "stages"


def removable(entry: Entry, stale: bool, older_than: Optional[float]) -> Optional[str]:
    """Why `gc` removes this entry, or None."""
    if not entry.complete:
        return None if in_use(entry.path) else "unfinished"
    if stale:
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
    store = NodeStore(args.dir)
    try:
        found = store.entries()
    except CacheEntryError as err:
        raise SystemExit(f"alignlab cache: error: {err}") from None
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
                store.remove(e.path)
            freed += e.size
    print(f"{'would free' if args.dry_run else 'freed'} {human_size(freed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
