"""Regenerate README.md's paper tables from experiments/paper/*.yaml (between the papers markers):
each sourced value as configured, and every declared deviation. tests/test_experiments.py checks
that the README holds what this renders."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- papers:start -->", "<!-- papers:end -->"


def paper_names() -> list:
    return sorted(p.stem for p in (REPO / "experiments" / "paper").glob("*.yaml") if not p.stem.endswith("_mini"))


def compose_papers() -> dict:
    from hydra import compose, initialize_config_dir

    from alignlab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return {name: compose("config", overrides=[f"experiment=paper/{name}"]) for name in paper_names()}


def replace_section(readme: str, body: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"README.md has no {START} ... {END} section")
    return pattern.sub(lambda _: f"{START}\n{body}{END}", readme)


def main() -> None:
    from alignlab.provenance import render_markdown

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readme", default=str(REPO / "README.md"))
    path = Path(parser.parse_args().readme)
    path.write_text(replace_section(path.read_text(), render_markdown(compose_papers())))
    print(f"wrote the paper tables into {path}")


if __name__ == "__main__":
    main()
