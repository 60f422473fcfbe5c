"""Shared fixtures: offline hub, the data mirror, the model cache and Hydra composition."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"


def mirror_dir() -> Path | None:
    """The data the tests read in place: $ALIGNLAB_DATA_HOME, ../shared/data, or a complete download
    cache (`alignlab data fetch --all`, which `make test` runs when there is no mirror)."""
    from alignlab.data.store import cache_root, manifest

    env = os.environ.get("ALIGNLAB_DATA_HOME")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if candidate.is_dir():
            return candidate.resolve()
    cache = cache_root()
    return cache if all((cache / rel).is_file() for rel in manifest()) else None


@pytest.fixture(scope="session")
def data_home() -> Path:
    path = mirror_dir()
    if path is None and os.environ.get("CI"):
        pytest.fail("data not found in CI: set ALIGNLAB_DATA_HOME or run `alignlab data fetch --all`")
    if path is None:
        pytest.skip("data not found: set ALIGNLAB_DATA_HOME, place a mirror at ../shared/data or run "
                    "`alignlab data fetch --all`")
    return path


@pytest.fixture(scope="session")
def model_cache() -> str:
    """The user's model cache: embedded models are converted once and reused across runs."""
    base = os.environ.get("ALIGNLAB_CACHE", str(Path.home() / ".cache" / "alignlab"))
    return str(Path(base) / "models")


@pytest.fixture
def compose(data_home, model_cache, tmp_path):
    """Compose the real config tree with overrides, with paths pointed at this test's tmp dir."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from alignlab.config import register_configs

    register_configs()

    def _compose(*overrides: str, run_dir: Path | None = None, cache_dir: Path | None = None):
        paths = [
            f"paths.data_home={data_home}",
            f"paths.model_cache={model_cache}",
            f"paths.cache_dir={cache_dir or tmp_path / 'cache'}",
            f"paths.run_dir={run_dir or tmp_path / 'run'}",
        ]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=paths + list(overrides))

    return _compose


def alignlab_env(data_home: Path, model_cache: str) -> dict:
    """Environment for running the `alignlab` CLI in a subprocess."""
    env = dict(os.environ)
    env["ALIGNLAB_DATA_HOME"] = str(data_home)
    env["ALIGNLAB_CACHE"] = str(Path(model_cache).parent)
    return env


TINY_SFT = (
    "pipeline=sft",  # the quickstart's pipeline is `full`; tests name other pipelines after this
    "model=tiny",
    "logger=none",
    "eval=none",
    "judge=none",
    "data.sft.max_train_rows=32",
    "data.sft.max_eval_rows=4",
    "data.sft.max_chars=800",
    "stage.sft.max_steps=4",
    "stage.sft.max_length=128",
    "stage.sft.per_device_train_batch_size=4",
    "stage.sft.logging_steps=1",
    "stage.sft.save_steps=2",
    "stage.sft.learning_rate=5e-3",
)


@pytest.fixture
def stage_context(tmp_path):
    """Build the StageContext the pipeline would hand a node (no W&B)."""
    from alignlab.data import load_data
    from alignlab.stages import node_hparams, spec
    from alignlab.stages.context import StageContext
    from alignlab.tracking import NodeTracker

    def _make(cfg, node: str = "sft", upstream=None):
        kind = cfg.pipeline.nodes[node].stage
        data = load_data(cfg.data[spec(kind).default_data], spec(kind).data_kind, data_home=cfg.paths.data_home)
        work = tmp_path / f"work-{node}"
        work.mkdir(parents=True, exist_ok=True)
        tracker = NodeTracker(cfg.logger, cfg.name, node, kind, {}, tmp_path, work / "metrics.jsonl")
        return StageContext(node, kind, node_hparams(cfg, node), cfg, data, upstream or {}, work, tracker)

    return _make


def _stage_overrides(kind: str, steps: int = 4) -> tuple:
    return (
        f"stage.{kind}.max_steps={steps}",
        f"stage.{kind}.max_length=128",
        f"stage.{kind}.per_device_train_batch_size=4",
        f"stage.{kind}.logging_steps=1",
        f"stage.{kind}.save_steps=2",
        f"stage.{kind}.learning_rate=5e-3",
    )


TINY_PREFERENCE = (
    "data.preference.max_train_rows=32",
    "data.preference.max_eval_rows=8",
    "data.preference.max_chars=600",
    *_stage_overrides("reward"),
    *_stage_overrides("dpo"),
)


def send_json(handler, status: int, body: bytes) -> None:
    """Answer an http.server request with a JSON body (the test servers on 127.0.0.1)."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
