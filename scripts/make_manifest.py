"""Write alignlab/data/manifest.tsv (package data) from a data mirror's MANIFEST.tsv.

    python scripts/make_manifest.py ../shared/data/MANIFEST.tsv

The mirror's manifest gives, for every file, the public repository, full commit, path in that
repository, SHA-256 and size; this adds the dataset's license (from the table below, which
follows the mirror's SOURCES.md) and fails if a file has none.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "alignlab" / "data" / "manifest.tsv"
COLUMNS = ["path", "repository", "commit", "path_in_repository", "sha256", "bytes", "license"]
LICENSES = {  # path prefix -> license, as SOURCES.md of the mirror states them
    "sft/alpaca_eval/": "Apache-2.0",
    "sft/oasst/": "Apache-2.0",
    "sft/self_instruct/": "Apache-2.0",
    "sft/gsm8k/": "MIT",
    "sft/codealpaca/": "CC BY-NC 4.0",
    "preference/hh_rlhf/": "MIT",
    "preference/alpaca_eval/": "Apache-2.0",
    "benchmarks/arc/": "CC BY-SA 4.0",
    "benchmarks/superglue/": "CC BY-SA 3.0",
    "benchmarks/piqa/": "AFL-3.0",
    "benchmarks/winogrande/": "CC-BY",
    "benchmarks/hellaswag/": "MIT",
    "benchmarks/gsm8k/": "MIT",
    "benchmarks/mmlu/": "MIT",
    "benchmarks/openbookqa/": "Apache-2.0",
    "prompts/": "Apache-2.0",
}


def license_of(path: str) -> str:
    for prefix, name in LICENSES.items():
        if path.startswith(prefix):
            return name
    raise SystemExit(f"{path}: no license known for this path; add its prefix to LICENSES")


def main(source: str) -> None:
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    missing = set(COLUMNS[:-1]) - set(rows[0] if rows else {})
    if missing:
        raise SystemExit(f"{source}: missing columns {sorted(missing)}")
    with OUT.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in sorted(rows, key=lambda r: r["path"]):
            writer.writerow([*(row[c] for c in COLUMNS[:-1]), license_of(row["path"])])
    print(f"{OUT}: {len(rows)} files")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/MANIFEST.tsv")
