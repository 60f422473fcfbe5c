"""Benchmark bookkeeping (scripts/bench_common.py, scripts/render_perf.py): repeated runs, their
spread, the ratio of medians and the README table row."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_common import alternate, figure, meets  # noqa: E402
from render_perf import render  # noqa: E402


def test_sides_alternate_and_a_goal_is_judged_by_the_ratio_of_medians():
    order = []
    runs = alternate({"trl": lambda i: order.append(("trl", i)) or {"i": i},
                      "alignlab": lambda i: order.append(("alignlab", i)) or {"i": i}}, repeats=3)
    assert order == [("trl", 0), ("alignlab", 0), ("trl", 1), ("alignlab", 1), ("trl", 2), ("alignlab", 2)]
    assert runs["alignlab"] == [{"i": 0}, {"i": 1}, {"i": 2}]

    # The best alignlab run over the worst trl run would be 0.9 / 0.4 = 2.25x; the medians give 1.4x.
    f = figure("P2 throughput", "episodes/s", [0.40, 0.50, 0.60], [0.9, 0.7, 0.3], ">= 1.5")
    assert f["baseline"] == {"median": 0.5, "min": 0.4, "max": 0.6, "runs": [0.4, 0.5, 0.6]}
    assert f["alignlab"]["median"] == 0.7 and f["ratio"] == 1.4
    assert f["meets_goal"] is False and f["ranges_overlap"] is True
    apart = figure("P3 memory", "MiB", [3000, 3100, 3050], [1000, 1100, 1050], "<= 0.4")
    assert apart["ratio"] == 0.344 and apart["meets_goal"] and not apart["ranges_overlap"]
    assert meets(1.05, "<= 1.05") and meets(1.5, ">= 1.5") and meets(2.0, None) is None
    with pytest.raises(ValueError, match="goal"):
        meets(1.0, "< 1")


def test_readme_table_shows_median_and_range_and_marks_overlap(tmp_path):
    f = figure("P1 overhead", "s", [170, 180, 175], [172, 178, 190], "<= 1.05", "bare trl script", "alignlab CLI")
    f["meets_goal"] = False  # what the table shows is decided from the ratio of medians, not this flag
    (tmp_path / "bench_overhead.json").write_text(json.dumps({"date": "2026-12-02", "machine": {}, "figures": [f]}))
    table = render(tmp_path)
    assert ("| P1 overhead | bare trl script 175 s (170-180, 3 runs) | alignlab CLI 178 s (172-190, 3 runs) | "
            "1.02 (ranges overlap) | <= 1.05 | yes |") in table
    (tmp_path / "bench_grid.json").write_text(json.dumps({"date": "2026-11-22", "baseline": {}, "ratio": 0.47}))
    with pytest.raises(SystemExit, match="bench_grid.json is a single-run result"):
        render(tmp_path)
