"""What the pipeline hands a stage, and the pieces every trainer-based stage shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import json

import torch
from omegaconf import DictConfig, OmegaConf

from alignlab.errors import TrainingDivergedError
from alignlab.models.precision import mixed_precision
from alignlab.tracking import NodeTracker


def divergence_guard(node: str, stage: str):
    """A trainer callback that stops training once a trainable weight is NaN/inf.

    It runs at the end of every optimizer step, before the trainer writes that step's checkpoint,
    so the newest checkpoint on disk is the last finite one. (transformers' own logging filters
    NaN losses out of the logged average, so the weights are what is checked.)
    """
    from transformers import TrainerCallback

    class DivergenceGuard(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if any(not torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
                raise TrainingDivergedError(
                    f"node {node}: a trainable weight became NaN/inf at step {state.global_step}; lower "
                    f"stage.{stage}.learning_rate (checkpoints up to the last finite step are kept, the node "
                    "is not published)")

    return DivergenceGuard()


@dataclass
class Artifact:
    """A finished node's output directory and what it reported."""

    node: str
    stage: str
    key: str
    path: Path
    metrics: Dict[str, Any] = field(default_factory=dict)

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def full_model_dir(self) -> Path:
        """Present instead of adapter/ when the node was fully fine-tuned (peft=none)."""
        return self.path / "model"

    def model_config(self, base_cfg):
        """The model group pointed at this node's full model directory."""
        return OmegaConf.merge(base_cfg, {"name_or_path": str(self.full_model_dir)})


def load_inference(cfg, artifact: Optional[Artifact] = None):
    """(model, tokenizer) in eval mode: the base of `cfg`, or a finished node's model on it."""
    from alignlab.models import load_adapter, load_base, load_tokenizer

    cache = cfg.paths.model_cache
    if artifact is not None and artifact.full_model_dir.is_dir():
        model = load_base(artifact.model_config(cfg.model), cfg.quant, cache)
    else:
        model = load_base(cfg.model, cfg.quant, cache)
        if artifact is not None:
            model = load_adapter(model, artifact.adapter_dir, trainable=False)
            if cfg.quant.method == "none":  # merged: generation and lm-eval run at the base's speed
                model = model.merge_and_unload()
    return model.eval(), load_tokenizer(cfg.model, cache)


@dataclass
class StageContext:
    """Inputs of one stage run: its hyperparameters, data, upstream artifacts and work directory."""

    node: str
    stage: str
    hparams: DictConfig
    cfg: DictConfig  # the whole composed config (model, quant, peft, paths, ...)
    data: Any  # alignlab.data.LoadedData
    upstream: Dict[str, Artifact]  # role (init, policy, reward) -> artifact
    work_dir: Path  # becomes the artifact directory when the stage returns
    tracker: NodeTracker

    @property
    def model_cache(self) -> str:
        return self.cfg.paths.model_cache

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    def last_checkpoint(self) -> Optional[str]:
        """The newest trainer checkpoint of an interrupted earlier attempt, if any."""
        from transformers.trainer_utils import get_last_checkpoint

        if not self.checkpoint_dir.is_dir():
            return None
        return get_last_checkpoint(str(self.checkpoint_dir))

    def policy_model(self, role: str):
        """Causal LM to train: the upstream `role` node's adapter (trainable) or a fresh adapter."""
        from alignlab.models import add_adapter, load_adapter, load_base

        cfg = self.cfg
        upstream = self.upstream.get(role)
        if upstream is not None and upstream.full_model_dir.is_dir():  # upstream was fully fine-tuned
            return load_base(upstream.model_config(cfg.model), cfg.quant, self.model_cache)
        model = load_base(cfg.model, cfg.quant, self.model_cache)
        if upstream is not None:
            return load_adapter(model, upstream.adapter_dir, trainable=True)
        return add_adapter(model, cfg.peft, cfg.quant, gradient_checkpointing=self.hparams.gradient_checkpointing)

    def trainer(self, trainer_cls, model, args, held_out: bool = True, **kwargs):
        """A trl trainer over this node's rows, tokenizer and tracking callback."""
        from datasets import Dataset

        from alignlab.models import load_tokenizer

        evaluate = held_out and bool(self.data.eval)
        return trainer_cls(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(self.data.train),
            eval_dataset=Dataset.from_list(self.data.eval) if evaluate else None,
            processing_class=load_tokenizer(self.cfg.model, self.model_cache),
            callbacks=[self.tracker.callback(), divergence_guard(self.node, self.stage)],
            **kwargs,
        )

    def fit(self, trainer, drop_adapters: tuple = ()) -> Dict[str, Any]:
        """Train (resuming from the newest checkpoint), evaluate the held-out split, save the adapter.

        `drop_adapters` names helper adapters (e.g. a frozen reference copy) left out of the artifact.
        """
        checkpoint = self.last_checkpoint()
        recorded = self.work_dir / "train_result.json"
        previous = json.loads(recorded.read_text()) if recorded.is_file() else None
        result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics: Dict[str, Any] = {
            "train_loss": result.training_loss,
            "train_steps": result.global_step,
            "resumed_from_step": self.checkpoint_step(checkpoint),
        }
        # Killed after the last step but before publishing: the rerun trains 0 steps, so the
        # training result recorded by the first attempt is the true one.
        if previous is not None and result.global_step == metrics["resumed_from_step"]:
            metrics = {**previous, "resumed_from_step": metrics["resumed_from_step"]}
        elif trainer.is_world_process_zero():
            recorded.write_text(json.dumps(metrics))
        if trainer.eval_dataset is not None:
            metrics.update(trainer.evaluate())
        for name in drop_adapters:
            if name in getattr(trainer.model, "peft_config", {}):
                trainer.model.delete_adapter(name)
        trainer.save_model(str(self.output_model_dir))  # main process only
        if trainer.is_world_process_zero():
            trainer.processing_class.save_pretrained(str(self.output_model_dir))
        return metrics

    @property
    def output_model_dir(self) -> Path:
        """adapter/ for LoRA, model/ for full fine-tuning."""
        return self.work_dir / ("adapter" if self.cfg.peft.method != "none" else "model")

    @staticmethod
    def checkpoint_step(checkpoint: Optional[str]) -> int:
        return int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else 0

    def trainer_args(self, config_cls, held_out: bool = True, **stage_specific):
        """Build a trl/transformers config from the shared TrainerConfig fields plus stage fields.

        `held_out=False`: the trainer gets no eval split (the stage evaluates on its own).
        """
        h = OmegaConf.to_container(self.hparams, resolve=True)
        extra = h.pop("extra", {}) or {}
        has_eval = held_out and bool(self.data.eval)
        on_cuda = torch.cuda.is_available()
        precision = mixed_precision(h["mixed_precision"])
        common = dict(
            output_dir=str(self.checkpoint_dir),
            learning_rate=h["learning_rate"],
            num_train_epochs=h["num_train_epochs"],
            max_steps=h["max_steps"],
            per_device_train_batch_size=h["per_device_train_batch_size"],
            per_device_eval_batch_size=h["per_device_eval_batch_size"],
            gradient_accumulation_steps=h["gradient_accumulation_steps"],
            lr_scheduler_type=h["lr_scheduler_type"],
            warmup_steps=h["warmup_steps"],
            weight_decay=h["weight_decay"],
            max_grad_norm=h["max_grad_norm"],
            optim=h["optim"],
            activation_checkpointing=h["gradient_checkpointing"],
            logging_steps=h["logging_steps"],
            eval_strategy="steps" if has_eval and h["eval_steps"] else "no",
            eval_steps=h["eval_steps"],
            save_strategy="steps",
            save_steps=h["save_steps"],
            save_total_limit=2,
            seed=h["seed"],
            data_seed=h["seed"],
            report_to="none",
            use_cpu=not on_cuda,
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            dataloader_num_workers=0,
            remove_unused_columns=True,
        )
        return config_cls(**{**common, **stage_specific, **extra})
