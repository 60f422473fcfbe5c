"""Where the public data files live, and fetching them on first use.

`manifest.tsv` (package data, written by scripts/make_manifest.py from a mirror's MANIFEST.tsv)
pins every file alignlab reads: public repository, full commit, path in that repository,
SHA-256, size and license. A data home is either

- a read-only mirror: `ALIGNLAB_DATA_HOME` or `paths.data_home` (air-gapped clusters, CI); a
  missing file is an error naming it and the fetch command; or
- the download cache `$ALIGNLAB_CACHE/data` (default `~/.cache/alignlab/data`): a missing file
  is downloaded from the repository's raw-file endpoint at the pinned commit (or from
  `ALIGNLAB_DATA_URL`/<path>, a server with the mirror's layout), streamed to a temporary file,
  SHA-256 verified and renamed into place, one process at a time per file (file lock).

This is hand-written because the files come from many git repositories at pinned commits, which
neither `datasets` nor `huggingface_hub` download from; it follows their cache discipline.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import requests
from filelock import FileLock
from tqdm.auto import tqdm

from .errors import DataError

log = logging.getLogger("alignlab.data")

DATA_HOME_ENV = "ALIGNLAB_DATA_HOME"
DATA_URL_ENV = "ALIGNLAB_DATA_URL"
OFFLINE_ENVS = ("ALIGNLAB_OFFLINE", "HF_HUB_OFFLINE")
TIMEOUT_ENV, RETRIES_ENV = "ALIGNLAB_DATA_TIMEOUT", "ALIGNLAB_DATA_RETRIES"
RAW_URL = "https://raw.githubusercontent.com/{repository}/{commit}/{path_in_repository}"
MANIFEST = Path(__file__).with_name("manifest.tsv")
_CHUNK = 1 << 20
_FETCH_DIR = ".fetch"  # locks and partial downloads, inside the cache


@dataclass(frozen=True)
class ManifestEntry:
    """One pinned public file."""

    path: str  # relative to the data home
    repository: str
    commit: str
    path_in_repository: str
    sha256: str
    bytes: int
    license: str

    def url(self) -> str:
        base = os.environ.get(DATA_URL_ENV)
        if base:
            return f"{base.rstrip('/')}/{self.path}"
        return RAW_URL.format(repository=self.repository, commit=self.commit,
                              path_in_repository=self.path_in_repository)


@lru_cache(maxsize=1)
def manifest() -> dict[str, ManifestEntry]:
    """Every pinned file by its path under the data home."""
    with MANIFEST.open(newline="") as f:
        return {r["path"]: ManifestEntry(**{**r, "bytes": int(r["bytes"])})
                for r in csv.DictReader(f, delimiter="\t")}


def entry(rel: str) -> ManifestEntry:
    try:
        return manifest()[rel]
    except KeyError:
        raise DataError(f"data file '{rel}' is not in alignlab's data manifest ({MANIFEST})") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def offline() -> str | None:
    """The variable that turns downloads off (e.g. 'HF_HUB_OFFLINE=1'), or None."""
    for var in OFFLINE_ENVS:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var}={os.environ[var]}"
    return None


def cache_root() -> Path:
    base = os.environ.get("ALIGNLAB_CACHE") or Path.home() / ".cache" / "alignlab"
    return Path(base).expanduser() / "data"


@dataclass(frozen=True)
class DataHome:
    """A directory with the mirror's layout; `fetches` for the download cache only."""

    root: Path
    origin: str  # how it was chosen, for messages
    fetches: bool

    def file(self, rel: str) -> Path:
        """Local path of data file `rel`, downloaded first if this is the cache and it is missing."""
        path = self.root / rel
        if path.is_file():
            return path
        if not self.fetches:
            raise DataError(
                f"data file {path} is missing from the data home {self.root} ({self.origin}); fetch it with "
                f"`{DATA_HOME_ENV}={self.root} alignlab data fetch {rel}`, or unset {DATA_HOME_ENV} to "
                f"download into the cache {cache_root()}")
        return self.fetch(rel)

    def fetch(self, rel: str) -> Path:
        """Download `rel` (unless present), verify its SHA-256 and move it into place."""
        item = entry(rel)
        path = self.root / rel
        why_not = offline()
        if why_not and not path.is_file():
            raise DataError(
                f"data file {rel} is not in {self.root} and downloads are off ({why_not}); run "
                f"`alignlab data fetch {rel}` where the network is reachable, or set {DATA_HOME_ENV} to a "
                "mirror that has it")
        work = self.root / _FETCH_DIR
        work.mkdir(parents=True, exist_ok=True)
        with FileLock(str(work / f"{item.sha256}.lock")):
            if path.is_file():  # another process fetched it while this one waited
                return path
            path.parent.mkdir(parents=True, exist_ok=True)
            part = work / f"{item.sha256}.{os.getpid()}.part"
            try:
                actual = _download(item, part)
                if actual != item.sha256:
                    raise DataError(f"{item.url()}: checksum mismatch for {rel}: expected sha256 {item.sha256}, "
                                    f"got {actual}; the file was not kept")
                os.replace(part, path)
            finally:
                part.unlink(missing_ok=True)
        return path


def _download(item: ManifestEntry, part: Path) -> str:
    """Stream `item` into `part` with retries; returns the SHA-256 of what arrived."""
    url, timeout = item.url(), float(os.environ.get(TIMEOUT_ENV, "30"))
    attempts = max(1, int(os.environ.get(RETRIES_ENV, "4")))
    log.info("fetching %s (%d bytes) from %s", item.path, item.bytes, url)
    for attempt in range(1, attempts + 1):
        try:
            with requests.get(url, stream=True, timeout=timeout) as response:
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Retry(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise DataError(f"{url}: HTTP {response.status_code} {response.reason} while fetching "
                                    f"{item.path}; is {DATA_URL_ENV} right?")
                digest = hashlib.sha256()
                with part.open("wb") as out, tqdm(total=item.bytes, unit="B", unit_scale=True,
                                                  desc=Path(item.path).name, disable=None, leave=False) as bar:
                    for chunk in response.iter_content(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                return digest.hexdigest()
        except (_Retry, requests.RequestException) as e:
            part.unlink(missing_ok=True)
            if attempt == attempts:
                raise DataError(f"{url}: could not fetch {item.path} after {attempts} attempt(s) "
                                f"(timeout {timeout:g} s): {e}; set {DATA_HOME_ENV} to a local mirror to run "
                                "without the network") from None
            wait = min(2.0 ** (attempt - 1), 30.0)
            log.warning("fetching %s: %s; retrying in %.0f s (%d/%d)", item.path, e, wait, attempt, attempts)
            time.sleep(wait)
    raise AssertionError("unreachable")


class _Retry(Exception):
    """A server answer worth retrying (429, 5xx)."""


def data_home(explicit: str | os.PathLike | None = None) -> DataHome:
    """`explicit` (paths.data_home), else $ALIGNLAB_DATA_HOME (both read-only), else the download cache."""
    raw, origin = (explicit, "paths.data_home") if explicit else (os.environ.get(DATA_HOME_ENV), DATA_HOME_ENV)
    if not raw:
        return DataHome(cache_root(), "download cache", fetches=True)
    root = Path(raw).expanduser()
    if not root.is_dir():
        raise DataError(f"data home {root} (from {origin}) is not a directory; point {DATA_HOME_ENV} at a "
                        "data mirror, or unset it to download into the cache")
    return DataHome(root.resolve(), origin, fetches=False)
