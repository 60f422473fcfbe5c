"""`alignlab data list|fetch|verify|where`: the pinned public data files and where they live."""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from .errors import DataError
from .mirror import MIRROR
from .store import DATA_HOME_ENV, DataHome, data_home, manifest, sha256_of


def human_size(n: float) -> str:
    """Bytes as B/KB/MB/GB (powers of 1000)."""
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _groups() -> dict[str, list[str]]:
    """Manifest paths by dataset: each mirror name, then the other files by folder."""
    named = {e.path for e in MIRROR.values()}
    groups: dict[str, list[str]] = {name: [e.path] for name, e in MIRROR.items()}
    rest = defaultdict(list)
    for path in manifest():
        if path not in named:
            rest[path.rsplit("/", 1)[0] if path.count("/") > 1 else path].append(path)
    groups.update(sorted(rest.items()))
    return groups


def _select(names: list[str]) -> list[str]:
    """Manifest paths for dataset names, folders (as `list` shows them) or file paths."""
    groups, paths = _groups(), manifest()
    chosen: list[str] = []
    for name in names:
        name = name.rstrip("/")
        if name in groups:
            chosen += groups[name]
        elif name in paths:
            chosen.append(name)
        else:
            under = [p for p in paths if p.startswith(name + "/")]
            if not under:
                raise DataError(f"'{name}' is neither a dataset name, a folder nor a file of the data "
                                "manifest; `alignlab data list` shows them")
            chosen += under
    return list(dict.fromkeys(chosen))


def cmd_list(home: DataHome) -> int:
    rows = [("name", "format", "rows", "size", "license", "here")]
    for name, paths in _groups().items():
        items = [manifest()[p] for p in paths]
        present = sum((home.root / p).is_file() for p in paths)
        here = "present" if present == len(paths) else "missing" if not present else f"{present}/{len(paths)}"
        named = MIRROR.get(name)
        rows.append((name, named.format if named else "-", named.note if named else f"{len(paths)} file(s)",
                     human_size(sum(i.bytes for i in items)), ", ".join(sorted({i.license for i in items})), here))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"\ndata home: {home.root} ({home.origin})")
    return 0


def cmd_fetch(home: DataHome, names: list[str], everything: bool) -> int:
    if not names and not everything:
        raise DataError("name datasets, folders or files to fetch (see `alignlab data list`), or pass --all")
    paths = list(manifest()) if everything else _select(names)
    target = DataHome(home.root, home.origin, fetches=True)  # an explicit fetch may fill a mirror too
    for path in paths:
        target.file(path)
    print(f"{len(paths)} file(s) present in {home.root}")
    return 0


def cmd_verify(home: DataHome) -> int:
    bad, checked = [], 0
    for path, item in manifest().items():
        local = home.root / path
        if local.is_file():
            checked += 1
            if sha256_of(local) != item.sha256:
                bad.append(str(local))
    if bad:
        print(f"alignlab: error: {len(bad)} of {checked} data file(s) in {home.root} do not match the manifest's "
              f"SHA-256: {', '.join(bad)}; delete them and run `alignlab data fetch`", file=sys.stderr)
        return 1
    print(f"{checked} data file(s) in {home.root} match the manifest ({len(manifest()) - checked} not present)")
    return 0


def cmd_where(home: DataHome) -> int:
    if home.fetches:
        print(f"{home.root}\tdownload cache: missing files are fetched on first use "
              f"(set {DATA_HOME_ENV} to read a mirror instead)")
    else:
        print(f"{home.root}\tread-only mirror (from {home.origin})")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignlab data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every dataset: format, rows, size, license, present or missing")
    fetch = sub.add_parser("fetch", help="download datasets, folders or files (checksummed)")
    fetch.add_argument("names", nargs="*", metavar="NAME|PATH")
    fetch.add_argument("--all", action="store_true", help="every file of the manifest")
    sub.add_parser("verify", help="re-hash every present file against the manifest")
    sub.add_parser("where", help="the data home in use")
    args = parser.parse_args(argv)
    try:
        home = data_home()
        if args.command == "list":
            return cmd_list(home)
        if args.command == "fetch":
            return cmd_fetch(home, args.names, args.all)
        if args.command == "verify":
            return cmd_verify(home)
        return cmd_where(home)
    except DataError as err:
        print(f"alignlab: error: {err}", file=sys.stderr)
        return 1
