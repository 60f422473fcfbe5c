"""`alignlab`: compose the Hydra config tree in conf/ and run its pipeline.

`alignlab` runs the quickstart experiment; `alignlab experiment=NAME` picks one from experiments/;
`alignlab --cfg job` prints the composed config; `-m` sweeps (multirun); `alignlab check ...`
checks the config (preflight) and prints the plan without training. A first word naming a
command (`alignlab data ...`) runs that command instead: Hydra overrides contain `=` or start
with `-`, so the two never clash.
"""
from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from alignlab.config import register_configs
from alignlab.errors import AlignlabError

register_configs()  # at import: launcher workers (joblib, submitit) unpickle run_experiment from here
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")  # the checkout's conf/
log = logging.getLogger("alignlab")
COMMANDS = {"data": "alignlab.data.cli", "cache": "alignlab.cache_cli",  # first word -> module whose main(argv)
            "judge-calibrate": "alignlab.eval.judge.cli"}  # returns the exit code


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def run_experiment(cfg: DictConfig) -> Optional[float]:
    """Runs the pipeline; returns `objective.metric` of the run (what an Optuna sweep maximises)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from alignlab.preflight import describe_plan, preflight

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and cfg.logger.group is None:  # the jobs of one grid share a W&B group
        cfg.logger.group = f"{cfg.name}-grid-{Path(HydraConfig.get().sweep.dir).name}"
    try:
        checked = preflight(cfg)  # before the heavy imports below: a mistake fails in seconds
        if cfg.dry_run:
            print(describe_plan(cfg, checked))
            return None
        from alignlab.grid import objective_value
        from alignlab.pipeline import Pipeline

        record = Pipeline(cfg, checked).run()
        objective = objective_value(cfg.objective, record)
    except AlignlabError as err:
        log.error("%s", err)
        print(f"\nalignlab: error: {err}", file=sys.stderr)  # on its own line, after any progress bar
        if multirun:  # Hydra records the failed job (grid summary) and goes on with the others
            raise
        sys.exit(1)
    log.info("summary: %s/summary.json", record.run_dir)
    for name, node in record.nodes.items():
        log.info("node %s (%s): %s %s", name, node.stage, node.status, node.artifact or "")
    if objective is not None:
        log.info("objective %s = %s", cfg.objective.metric, objective)
    return objective


def main() -> None:
    """The `alignlab` console script: a command (`alignlab data list`) or an experiment run."""
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        sys.exit(importlib.import_module(COMMANDS[sys.argv[1]]).main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "check":
        sys.argv = [sys.argv[0], *sys.argv[2:], "dry_run=true"]
    run_experiment()


if __name__ == "__main__":
    main()
