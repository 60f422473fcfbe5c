"""The typed run record: summary.json round-trips through `load`/`dump`, and the report, the grid
summary, the W&B compare run and the sweep objective build from a summary an earlier run wrote.

`tests/data/summary_v1.json` was written by a real run (schema version 1) of a paper experiment
on the tiny model, with forgetting checks and a calibrated judge: `alignlab
experiment=paper/dpo_hh_mini model=tiny logger=none eval=forgetting_quick eval.tasks=[alignlab_piqa]
eval.limit=4 eval.bootstrap_iters=0 judge=local judge.local.name_or_path=embedded:tiny-llama
judge.num_prompts=3 judge.max_new_tokens=8 judge.batch_size=3 judge.calibration.pairs=4
stage.sft.max_steps=2 stage.dpo.max_steps=2 stage.sft.max_length=128 stage.dpo.max_length=128`.
Its artifact and response paths no longer exist: readers must not need them.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from alignlab.grid import objective_value, write_grid_summary
from alignlab.record import SCHEMA_VERSION, RecordError, RunRecord, dump, load
from alignlab.report import write_report
from alignlab.tracking import log_comparison
from wandb_records import records

FIXTURE = Path(__file__).parent / "data" / "summary_v1.json"


def test_summary_round_trips_to_identical_json(tmp_path):
    record = load(FIXTURE)
    assert isinstance(record, RunRecord) and record.schema_version == SCHEMA_VERSION == 1
    dump(record, tmp_path / "summary.json")
    assert (tmp_path / "summary.json").read_text() == FIXTURE.read_text()


def test_fixture_covers_every_section():
    record = load(FIXTURE)
    assert set(record.nodes) == {"sft", "dpo"} and record.nodes["dpo"].upstream == {"policy": "sft"}
    assert record.nodes["dpo"].hparams["beta"] > 0 and record.nodes["sft"].data.train > 0
    delta = record.forgetting.delta("dpo", "alignlab_piqa")
    assert delta.vs_base.n == 4 and delta.vs_parent is not None  # dpo's parent is sft
    assert set(record.judge.comparisons) == {"sft:base", "dpo:sft"} and record.judge.calibration.sets
    assert record.paper.citation.startswith("Rafailov") and record.paper.deviations["model"].kind == "model"


def _job(sweep: Path, name: str, overrides: list, summary: Path) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
    shutil.copy(summary, job / "summary.json")


def test_report_grid_summary_and_compare_run_build_from_an_earlier_summary(tmp_path):
    record = load(FIXTURE)
    report = write_report(record, tmp_path / "report")["report.md"].read_text()
    for text in ("Reproduces Rafailov", "| sft | sft | trained |", "| dpo | dpo | trained |", "alignlab_piqa",
                 "dpo vs sft", "Judge calibration"):
        assert text in report, text

    _job(tmp_path / "sweep", "0", ["stage.dpo.beta=0.1"], FIXTURE)
    [row] = write_grid_summary(tmp_path / "sweep")
    assert row["status"] == "ok" and row["dpo/status"] == "trained"
    # the registry's headline metrics of each node's stage are the columns
    assert row["sft/eval_loss"] == record.nodes["sft"].metrics["eval_loss"]
    assert row["dpo/eval_rewards/accuracies"] == record.nodes["dpo"].metrics["eval_rewards/accuracies"]
    assert row["dpo/piqa Δbase"] == record.forgetting.delta("dpo", "alignlab_piqa").vs_base.delta
    assert row["judge dpo:sft p_better"] == record.judge.comparisons["dpo:sft"].p_better

    logger = SimpleNamespace(backend="wandb", mode="offline", project="alignlab", entity=None, group=None, tags=[])
    log_comparison(logger, record.name, dataclasses.replace(record, run_dir=str(tmp_path)), {})
    [path] = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    run = next(r.run for r in records(path) if r.WhichOneof("record_type") == "run")
    assert run.job_type == "compare"
    tables = {p.name.split("_")[0] for p in tmp_path.glob("wandb/offline-run-*/files/media/table/*.table.json")}
    assert {"forgetting", "judge"} <= tables

    objective = SimpleNamespace(metric="dpo/eval_rewards/accuracies", gate_fail_value=None)
    assert objective_value(objective, record) == record.nodes["dpo"].metrics["eval_rewards/accuracies"]


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(schema_version=SCHEMA_VERSION + 1),
     f"this summary has schema_version {SCHEMA_VERSION + 1}; this alignlab reads schema_version {SCHEMA_VERSION}"),
    (lambda s: s.pop("schema_version"), "this summary has no schema_version (written before versioned summaries)"),
    (lambda s: s["nodes"]["sft"].pop("key"), "summary.nodes.sft: missing field 'key'"),
    (lambda s: s["nodes"]["dpo"].update(kee="x"), "summary.nodes.dpo: unknown field 'kee'"),
    (lambda s: s["judge"]["comparisons"]["dpo:sft"].update(win="3"), "summary.judge.comparisons.dpo:sft.win: expected int"),
    (lambda s: s["forgetting"]["nodes"]["dpo"]["deltas"][0]["vs_base"].pop("n"),
     "summary.forgetting.nodes.dpo.deltas[0].vs_base: missing field 'n'"),
])
def test_other_versions_and_malformed_summaries_are_one_error_naming_the_file(tmp_path, change, message):
    data = json.loads(FIXTURE.read_text())
    change(data)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match="^" + str(path).replace(".", r"\.") + ": ") as err:
        load(path)
    assert message in str(err.value)
    _job(tmp_path / "sweep", "0", [], path)
    with pytest.raises(RecordError, match="^" + str(tmp_path / "sweep" / "0" / "summary.json").replace(".", r"\.")):
        write_grid_summary(tmp_path / "sweep")


def test_a_file_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("{half")
    with pytest.raises(RecordError, match=f"{path}: not a readable summary"):
        load(path)


def test_reward_kl_section_reaches_the_report_grid_and_compare_run(tmp_path):
    """A summary with a `reward_kl` section (the fixture's models placed by hand: this checks the data
    path, tests/test_reward_kl.py the values) round-trips and draws the report's frontier, the grid's
    columns and frontier figure (labelled by the swept value) and the compare run's table."""
    from alignlab.grid import FRONTIER, frontier_points
    from alignlab.record import RewardKLNode, RewardKLRecord
    from alignlab.report import FRONTIER_PLOT

    record = load(FIXTURE)
    assert record.reward_kl is None  # written before the section existed, still read
    point = dict(reference="sft", label="", reward=0.5, reward_ci=[0.25, 0.75], kl=1.5, kl_ci=[1.0, 2.0], prompts=8,
                 n=16, eos_fraction=0.5, response_length=12.0)
    record.reward_kl = RewardKLRecord(
        reward="rm_gold", data="prompts", prompts=8, samples_per_prompt=2, max_new_tokens=16, temperature=1.0, seed=1,
        reference="upstream", confidence=0.95,
        nodes={"base": RewardKLNode(**{**point, "stage": "base", "reference": "base", "kl": 0.0, "kl_ci": [0.0, 0.0]}),
               "dpo": RewardKLNode(**{**point, "stage": "dpo", "label": "beta=0.1"})})
    dump(record, tmp_path / "summary.json")
    assert load(tmp_path / "summary.json") == record
    report = write_report(record, tmp_path / "report")
    assert FRONTIER_PLOT in report and "| dpo | dpo | beta=0.1 | sft | 0.50 [0.25, 0.75] | 1.50 [1.00, 2.00]" in \
        report["report.md"].read_text()

    record.reward_kl.nodes["dpo"].label = ""  # in a grid the swept value tells the points apart
    dump(record, tmp_path / "summary.json")
    for job, beta in (("0", "0.1"), ("1", "0.3")):
        _job(tmp_path / "sweep", job, [f"stage.dpo.beta={beta}"], tmp_path / "summary.json")
    record.reward_kl.nodes["dpo"].kl = 3.0  # the second grid point lies elsewhere
    dump(record, tmp_path / "sweep" / "1" / "summary.json")
    rows = write_grid_summary(tmp_path / "sweep")
    assert [r["dpo/reward_kl/kl"] for r in rows] == [1.5, 3.0] and rows[0]["dpo/reward_kl/reward_lo"] == 0.25
    points, _ = frontier_points([tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"])
    assert [label for label, _, _ in points] == ["base", "dpo, beta=0.1", "dpo, beta=0.3"]
    assert (tmp_path / "sweep" / FRONTIER).is_file() and FRONTIER in (tmp_path / "sweep" / "grid_summary.md").read_text()

    logger = SimpleNamespace(backend="wandb", mode="offline", project="alignlab", entity=None, group=None, tags=[])
    log_comparison(logger, record.name, dataclasses.replace(record, run_dir=str(tmp_path)), {})
    tables = [p.name for p in tmp_path.glob("wandb/offline-run-*/files/media/table/*.table.json")]
    assert any(name.startswith("reward_kl") for name in tables)
