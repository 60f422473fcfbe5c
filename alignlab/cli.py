"""`alignlab`: compose the Hydra config tree in conf/ and run its pipeline.

`alignlab` runs the quickstart experiment; `alignlab experiment=NAME` picks one from experiments/;
`alignlab --cfg job` prints the composed config; `-m` sweeps (multirun).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from alignlab.config import register_configs
from alignlab.errors import AlignlabError

register_configs()
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")  # the checkout's conf/
log = logging.getLogger("alignlab")


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> Optional[float]:
    """Runs the pipeline; returns `objective.metric` of the run (what an Optuna sweep maximises)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from alignlab.grid import objective_value
    from alignlab.pipeline import run

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and cfg.logger.group is None:  # the jobs of one grid share a W&B group
        cfg.logger.group = f"{cfg.name}-grid-{Path(HydraConfig.get().sweep.dir).name}"
    try:
        summary = run(cfg)
        objective = objective_value(cfg.objective, summary)
    except AlignlabError as err:
        log.error("%s", err)
        print(f"\nalignlab: error: {err}", file=sys.stderr)  # on its own line, after any progress bar
        if multirun:  # Hydra records the failed job (grid summary) and goes on with the others
            raise
        sys.exit(1)
    log.info("summary: %s/summary.json", summary["run_dir"])
    for name, node in summary["nodes"].items():
        log.info("node %s (%s): %s %s", name, node["stage"], node["status"], node.get("artifact", ""))
    if objective is not None:
        log.info("objective %s = %s", cfg.objective.metric, objective)
    return objective


if __name__ == "__main__":
    main()
