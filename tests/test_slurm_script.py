"""scripts/slurm/alignlab.sbatch under stand-ins for SLURM's `scontrol`/`srun` (SLURM is not
installable here) and for `accelerate`, which records each rank's command line."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import REPO

SCRIPT = REPO / "scripts" / "slurm" / "alignlab.sbatch"


def _bin(tmp: Path) -> dict:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    tools = {
        "scontrol": "#!/bin/bash\necho node-a; echo node-b\n",
        # srun runs its command once per node, each with its own SLURM_PROCID, one second apart
        "srun": "#!/bin/bash\nfor rank in 0 1; do SLURM_PROCID=$rank \"$@\"; sleep 1; done\n",
        "accelerate": f"#!/bin/bash\necho \"$@\" >> {tmp / 'launches.txt'}\n",
    }
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "8"}


def _launches(tmp: Path, *overrides: str) -> list:
    subprocess.run(["bash", str(SCRIPT), "accelerate/ddp.yaml", *overrides], env=_bin(tmp), check=True, timeout=60)
    return (tmp / "launches.txt").read_text().splitlines()


def test_every_rank_gets_the_same_run_dir(tmp_path):
    launches = _launches(tmp_path, "experiment=paper/zephyr", "stage.dpo.beta=0.1")
    assert len(launches) == 2
    for line in launches:
        assert "--main_process_ip node-a" in line and "-m alignlab.cli" in line
        assert "hydra.run.dir=outputs/slurm-4242" in line and "stage.dpo.beta=0.1" in line


def test_a_run_dir_given_by_the_user_is_kept(tmp_path):
    launches = _launches(tmp_path, "hydra.run.dir=/shared/run1")
    assert all("hydra.run.dir=/shared/run1" in line and "slurm-4242" not in line for line in launches)
