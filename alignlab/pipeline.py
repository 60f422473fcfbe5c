"""Declarative pipeline: order the nodes, take finished ones from the stage cache (`NodeStore`),
run the rest, evaluate and judge the generative ones, and write summary.json and the report.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from accelerate import PartialState
from omegaconf import DictConfig, OmegaConf

from alignlab.data.store import data_home as resolve_data_home
from alignlab.node_store import NodeStore, library_versions, node_key
from alignlab.preflight import Checked, preflight
from alignlab.provenance import paper_section
from alignlab.ranks import MainProcessSignal
from alignlab.record import SUMMARY, NodeData, NodeRecord, RunRecord, dump, from_dict
from alignlab.eval.checks import ForgettingChecks
from alignlab.eval.judge.runner import JudgeChecks
from alignlab.eval.reward_kl import RewardKLChecks, node_label
from alignlab.report import write_report
from alignlab.stages import BASE, UPSTREAM_ROLES, generative, spec, stage_module
from alignlab.stages.context import Artifact, StageContext, load_inference
from alignlab.tracking import NodeTracker, log_comparison, redact

log = logging.getLogger("alignlab.pipeline")


class Pipeline:
    """Runs one composed config's pipeline and records the outcome in summary.json."""

    def __init__(self, cfg: DictConfig, checked: Checked):
        self.cfg, self.checked = cfg, checked
        self.cache_dir = Path(cfg.paths.cache_dir).expanduser().resolve()
        self.run_dir = Path(cfg.paths.run_dir).expanduser().resolve()
        # A read-only mirror (paths.data_home / ALIGNLAB_DATA_HOME), or None: the download cache.
        self.data_home = str(resolve_data_home(cfg.paths.data_home).root) if cfg.paths.data_home else None
        self.record = RunRecord(name=cfg.name, run_dir=str(self.run_dir),
                                started=datetime.now(timezone.utc).isoformat(), status="running",
                                paper=paper_section(cfg) if cfg.paper.citation else None)
        # Under `accelerate launch` every process runs the pipeline: all train each node together;
        # the main process alone holds the node lock, publishes artifacts, evaluates and reports.
        self.state = PartialState(cpu=not torch.cuda.is_available(),
                                  timeout=timedelta(seconds=cfg.process_group_timeout))
        self.main = self.state.is_main_process
        # Several processes: the others wait for the main one's evaluations without a collective.
        self.signal = MainProcessSignal(self.state, self.cache_dir) if self.state.num_processes > 1 else None
        self.store = NodeStore(self.cache_dir, self.state)
        self.forgetting: Optional[ForgettingChecks] = None
        self.judging: Optional[JudgeChecks] = None
        self.reward_kl: Optional[RewardKLChecks] = None

    def run(self) -> RunRecord:
        order = self.checked.order
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        artifacts: Dict[str, Artifact] = {}
        try:
            if self.cfg.eval.enabled and self.main:
                self.forgetting = ForgettingChecks(self.cfg, self.cache_dir, self.data_home)
                self.record.forgetting = self.forgetting.section
            if self.cfg.judge.enabled and self.main:
                self.judging = JudgeChecks(self.cfg, self.cache_dir, self.data_home, self.run_dir)
                self.record.judge = self.judging.section
            if self.cfg.eval.reward_kl.enabled and self.main:
                self.reward_kl = RewardKLChecks(self.cfg, self.cache_dir, self.data_home)
                self.record.reward_kl = self.reward_kl.section
            self._evaluate(BASE, None)
            for name in order:
                artifacts[name] = self._run_node(name, artifacts)
                if generative(self.cfg.pipeline.nodes[name].stage):
                    self._write_summary()
                    self._evaluate(name, artifacts[name])
            if self.reward_kl is not None:  # after every node: the reward node may come after the policies
                self._reward_kl(order, artifacts)
            if self.judging is not None:
                self.judging.judge()
            self.record.status = "ok"
        except BaseException as err:
            self.record.status, self.record.error = "failed", f"{type(err).__name__}: {err}"
            raise
        finally:
            if self.signal is not None:
                self.signal.finish(self.record.error)
            self.record.finished = datetime.now(timezone.utc).isoformat()
            if self.main:
                self._write_summary()
                self._report()
        return self.record

    def _evaluate(self, name: str, artifact: Optional[Artifact]) -> None:
        """Forgetting checks and judged responses of the base (artifact None) or a generative node,
        loading its model at most once and only when a result is not cached."""
        loaded: List[Any] = []

        def load():
            if not loaded:
                loaded.append(load_inference(self.cfg, artifact))
            return loaded[0]

        if artifact is None:
            identity = {"model": OmegaConf.to_container(self.cfg.model, resolve=True),
                        "quant": OmegaConf.to_container(self.cfg.quant, resolve=True)}
        else:
            identity = {"node_key": artifact.key}
        parent = None if artifact is None else self._generative_parent(name)
        if self.forgetting is not None:
            if artifact is None:
                self.forgetting.base(identity, load)
            else:
                self.forgetting.node(name, identity, load, parent)
        if self.judging is not None:
            self.judging.respond(name, identity, load, stage=artifact.stage if artifact else BASE, parent=parent)

    def _reward_kl(self, order: List[str], artifacts: Dict[str, Artifact]) -> None:
        """Gold reward and KL of the base and of every generative node, against its generative parent
        (`reference: upstream`; the base for a root node) or the base."""
        base = {"name": BASE, "adapter": None,
                "identity": {"model": OmegaConf.to_container(self.cfg.model, resolve=True),
                             "quant": OmegaConf.to_container(self.cfg.quant, resolve=True)}}

        def model(name: Optional[str]) -> Dict[str, Any]:
            if name is None:
                return base
            return {"name": name, "adapter": artifacts[name].adapter_dir, "identity": {"node_key": artifacts[name].key}}

        reward = model(self.cfg.eval.reward_kl.reward)
        self.reward_kl.evaluate(BASE, BASE, "", base, base, reward)
        self._write_summary()
        for name in order:
            node = self.cfg.pipeline.nodes[name]
            if not generative(node.stage):
                continue
            parent = self._generative_parent(name) if self.cfg.eval.reward_kl.reference == "upstream" else None
            self.reward_kl.evaluate(name, node.stage, node_label(node.hparams), model(name), model(parent), reward)
            self._write_summary()

    def _report(self) -> None:
        """report.md/report.html and the W&B compare run; a failure here never masks the run's own."""
        try:
            paths = write_report(self.record, self.run_dir, self.cfg.judge.sample_responses)
            log_comparison(self.cfg.logger, self.cfg.name, self.record, paths)
        except Exception:  # noqa: BLE001 - the run's outcome is already in summary.json
            log.exception("could not write the report of %s", self.run_dir)

    def _generative_parent(self, name: str) -> Optional[str]:
        node = self.cfg.pipeline.nodes[name]
        for role in ("policy", "init"):
            up = node.get(role)
            if up is not None and generative(self.cfg.pipeline.nodes[up].stage):
                return up
        return None

    def _write_summary(self) -> None:
        if not self.main:
            return
        dump(self.record, self.run_dir / SUMMARY)

    def _run_node(self, name: str, artifacts: Dict[str, Artifact]) -> Artifact:
        node = self.cfg.pipeline.nodes[name]
        data, data_name = self.checked.data[name], self.checked.data_names[name]
        upstream = {role: artifacts[node[role]] for role in UPSTREAM_ROLES if node.get(role) is not None}
        key = node_key(self.cfg, node.stage, self.checked.hparams[name], data.fingerprint, upstream)
        entry = NodeRecord(
            stage=node.stage, key=key, upstream={role: art.node for role, art in upstream.items()},
            data=from_dict(NodeData, {**data.report, "name": data_name, "overlap": self.checked.overlap[name],
                                      "train_overlap": self.checked.train_overlap[name]}),
            hparams=redact(OmegaConf.to_container(self.checked.hparams[name], resolve=True)), status="running")
        self.record.nodes[name] = entry
        start = time.time()
        if self.signal is not None:
            self.signal.reached(f"node-{name}")  # the main process is done evaluating the nodes before
        with self.store.claim(self.store.entry(node.stage, key)) as final:
            art = self.store.cached(name, node.stage, key, final)
            if art is not None:
                log.info("node %s: cache hit %s", name, final)
                entry.status, entry.artifact, entry.metrics = "cached", str(final), art.metrics
                return art
            self._write_summary()
            try:
                metrics = self._train(name, node, data, upstream, key, final)
            except BaseException as err:
                entry.status, entry.error = "failed", f"{type(err).__name__}: {err}"
                entry.seconds = round(time.time() - start, 2)
                raise
        entry.status, entry.artifact, entry.metrics = "trained", str(final), metrics
        entry.seconds = round(time.time() - start, 2)
        return Artifact(node=name, stage=node.stage, key=key, path=final, metrics=metrics)

    def _train(self, name, node, data, upstream, key, final) -> Dict[str, Any]:
        """Run the node's recipe in the entry's partial directory (resuming there) and publish it."""
        node_cfg = {
            "node": name,
            "key": key,
            "stage": node.stage,
            "recipe_version": spec(node.stage).version,
            "libraries": library_versions(),
            "hparams": OmegaConf.to_container(self.checked.hparams[name], resolve=True),
            "model": OmegaConf.to_container(self.cfg.model, resolve=True),
            "quant": OmegaConf.to_container(self.cfg.quant, resolve=True),
            "peft": OmegaConf.to_container(self.cfg.peft, resolve=True),
            "data": OmegaConf.to_container(self.cfg.data[self.checked.data_names[name]], resolve=True),
            "upstream": {role: {"node": a.node, "key": a.key, "path": str(a.path)} for role, a in upstream.items()},
        }
        work, resumed = self.store.open(final, redact(node_cfg))
        logger = self.cfg.logger if self.main else OmegaConf.merge(self.cfg.logger, {"backend": "none"})
        tracker = NodeTracker(logger, self.cfg.name, name, node.stage, node_cfg, self.run_dir, work / "metrics.jsonl")
        log.info("node %s: %s %s", name, "resuming in" if resumed else "training in", work)
        ok = False
        try:
            ctx = StageContext(name, node.stage, self.checked.hparams[name], self.cfg, data, upstream, work, tracker)
            metrics = stage_module(node.stage).run(ctx)
            tracker.summary(metrics)
            ok = True
        finally:
            tracker.finish(ok)
        self.store.publish(work, final, name, key, metrics)
        return metrics


def run(cfg: DictConfig) -> RunRecord:
    """Preflight (every check that needs no model), then the pipeline."""
    return Pipeline(cfg, preflight(cfg)).run()
