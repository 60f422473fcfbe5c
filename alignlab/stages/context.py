"""What the pipeline hands a stage, and the pieces every trainer-based stage shares."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from alignlab.errors import TrainingCollapsedError, TrainingDivergedError
from alignlab.models.precision import mixed_precision
from alignlab.tracking import NodeTracker

log = logging.getLogger("alignlab.stages")

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
class CollapseWatch:
    """Stops a node whose training collapsed without NaN (which the divergence guard would catch).

    Signals, each for `patience` consecutive logging steps: the gradient norm is exactly zero while
    the learning rate is not; or, for token-level losses (`uniform_loss` = ln(vocabulary size)),
    the loss sits within `tolerance` of a uniform next-token distribution's after it had been
    below it (a randomly initialised model starts there; a collapsed one returns there).
    """

    node: str
    stage: str
    patience: int  # 0: off
    tolerance: float
    uniform_loss: Optional[float] = None
    _learned: bool = False
    _at_uniform: int = 0
    _zero_grad: int = 0

    def update(self, step: int, loss: Optional[float] = None, grad_norm: Optional[float] = None,
               learning_rate: Optional[float] = None) -> None:
        if self.patience <= 0:
            return
        signal = None
        if loss is not None and self.uniform_loss is not None:
            self._learned |= loss < self.uniform_loss - self.tolerance
            near = self._learned and abs(loss - self.uniform_loss) <= self.tolerance
            self._at_uniform = self._at_uniform + 1 if near else 0
            if self._at_uniform >= self.patience:
                signal = (f"the loss ({loss:.4f}) has stayed within {self.tolerance:g} of ln(vocabulary size) = "
                          f"{self.uniform_loss:.4f}, a uniform next-token distribution")
        if grad_norm is not None and learning_rate:
            self._zero_grad = self._zero_grad + 1 if grad_norm == 0 else 0
            if self._zero_grad >= self.patience:
                signal = f"the gradient norm has been exactly 0 at learning rate {learning_rate:g}"
        if signal:
            raise TrainingCollapsedError(
                f"node {self.node}: training collapsed at step {step}: {signal} for {self.patience} logging steps; "
                f"lower stage.{self.stage}.learning_rate (checkpoints are kept, the node is not published; "
                f"stage.{self.stage}.collapse_patience=0 turns this check off)")


def collapse_guard(node: str, stage: str, hparams, token_loss: bool):
    """A trainer callback feeding each logged loss, gradient norm and learning rate to a CollapseWatch."""
    import math

    from transformers import TrainerCallback

    class CollapseGuard(TrainerCallback):
        watch: Optional[CollapseWatch] = None

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if self.watch is None:
                uniform = math.log(model.config.vocab_size) if token_loss else None
                self.watch = CollapseWatch(node, stage, hparams.collapse_patience, hparams.collapse_tolerance, uniform)
            logs = logs or {}
            self.watch.update(state.global_step, logs.get("loss"), logs.get("grad_norm"), logs.get("learning_rate"))

    return CollapseGuard()


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
    from alignlab.models import load_adapter, load_base, load_tokenizer, torch_dtype

    cache = cfg.paths.model_cache
    if artifact is not None and artifact.full_model_dir.is_dir():
        model = load_base(artifact.model_config(cfg.model), cfg.quant, cache)
    else:
        model = load_base(cfg.model, cfg.quant, cache)
        if artifact is not None:
            model = load_adapter(model, artifact.adapter_dir, trainable=False)
            # Merged, generation and lm-eval run at the base's speed; but folding W + BA into bf16/fp16
            # (or quantized) weights rounds it, and forgetting deltas would include that rounding.
            if cfg.quant.method == "none" and torch_dtype(cfg.model) == torch.float32:
                model = model.merge_and_unload()
    return model.eval(), load_tokenizer(cfg.model, cache)


# TrainerConfig fields handed to transformers/trl under the same name.
PASSED_THROUGH = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                  "per_device_eval_batch_size", "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps",
                  "weight_decay", "max_grad_norm", "optim", "adam_beta1", "adam_beta2", "adam_epsilon",
                  "logging_steps", "eval_steps", "save_steps")


def trainer_fields(h: dict, has_eval: bool) -> dict:
    """The transformers/trl training-argument fields alignlab sets from a stage's TrainerConfig `h`."""
    precision = mixed_precision(h["mixed_precision"])
    return {
        **{name: h[name] for name in PASSED_THROUGH},
        "activation_checkpointing": h["gradient_checkpointing"],
        "eval_strategy": "steps" if has_eval and h["eval_steps"] else "no",
        "save_strategy": "steps",
        "save_total_limit": 2,
        "seed": h["seed"],
        "data_seed": h["seed"],
        "report_to": "none",
        "use_cpu": not torch.cuda.is_available(),
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "dataloader_num_workers": 0,
        "remove_unused_columns": True,
    }


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
    too_long: Dict[str, int] = field(default_factory=dict)  # split -> rows over max_length tokens

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

    def trainer(self, trainer_cls, model, args, held_out: bool = True, token_loss: bool = False,
                prepare: Optional[Callable[[Any, list], list]] = None, **kwargs):
        """A trl trainer over this node's rows, tokenizer, tracking callback and guards
        (`token_loss`: the loss is next-token cross-entropy, so a collapse to uniform is detectable;
        `prepare(tokenizer, rows)`: the rows as the trainer gets them, after `fit_to_length`); the
        model's dropout off if the stage says so."""
        from datasets import Dataset

        from alignlab.models import disable_dropout, load_tokenizer

        evaluate = held_out and bool(self.data.eval)
        tokenizer = load_tokenizer(self.cfg.model, self.model_cache)
        train = self.fit_to_length(tokenizer, self.data.train, "train")
        held = self.fit_to_length(tokenizer, self.data.eval, "eval") if evaluate else []
        if prepare is not None:
            train, held = prepare(tokenizer, train), prepare(tokenizer, held)
        if self.hparams.disable_dropout:
            disable_dropout(model)
        return trainer_cls(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(train),
            eval_dataset=Dataset.from_list(held) if held else None,
            processing_class=tokenizer,
            callbacks=[self.tracker.callback(), divergence_guard(self.node, self.stage),
                       collapse_guard(self.node, self.stage, self.hparams, token_loss)],
            **kwargs,
        )

    def fit_to_length(self, tokenizer, rows: list, split: str) -> list:
        """Rows longer than `max_length` tokens (rendered through the chat template; a preference
        row by its longer side, its prompt cut to the stage's prompt budget) are counted in
        `too_long` and left to the trainer's truncation, dropped, or an error, as `on_too_long` says."""
        from alignlab.data import DataError
        from alignlab.stages.prompts import PromptBudget, chat_ids, preference_ids

        h, key = self.hparams, f"stage.{self.stage}"
        budget = PromptBudget.of(tokenizer, h, key)

        def length(row: dict) -> int:
            if "messages" in row:
                return len(chat_ids(tokenizer, row["messages"]))
            ids = preference_ids(tokenizer, row, budget)
            return len(ids["prompt_ids"]) + max(len(ids["chosen_ids"]), len(ids["rejected_ids"]))

        lengths = [length(r) for r in rows]
        over = [i for i, n in enumerate(lengths) if n > h.max_length]
        self.too_long[split] = len(over)
        if not over:
            return rows
        where = f"{self.data.report['path']}: {split} row {over[0] + 1} of {len(rows)}"
        if h.on_too_long == "error":
            raise DataError(f"{where} has {lengths[over[0]]} tokens, more than {key}.max_length={h.max_length}; "
                            f"set {key}.on_too_long=truncate or drop, or raise max_length")
        log.warning("node %s: %d of %d %s rows are longer than max_length=%d tokens: %s", self.node, len(over),
                    len(rows), split, h.max_length, "dropped" if h.on_too_long == "drop" else "truncated")
        if h.on_too_long == "truncate":
            return rows
        kept = [r for i, r in enumerate(rows) if lengths[i] <= h.max_length]
        if not kept:
            raise DataError(f"{where}: every {split} row is longer than {key}.max_length={h.max_length}")
        return kept

    def fit(self, trainer, drop_adapters: tuple = ()) -> Dict[str, Any]:
        """Train (resuming from the newest checkpoint), evaluate the held-out split, save the adapter.

        `drop_adapters` names helper adapters (e.g. a frozen reference copy) left out of the artifact.
        """
        checkpoint = self.last_checkpoint()
        if trainer.is_world_process_zero():
            self.tracker.rewind(self.checkpoint_step(checkpoint))
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
        metrics.update({f"rows_over_max_length/{split}": n for split, n in self.too_long.items()})
        if trainer.eval_dataset is not None:
            metrics.update(trainer.evaluate())
        for name in drop_adapters:
            if name in getattr(trainer.model, "peft_config", {}):
                trainer.model.delete_adapter(name)
        trainer.save_model(str(self.output_model_dir))  # main process only
        if trainer.is_world_process_zero():
            trainer.processing_class.save_pretrained(str(self.output_model_dir))
            # transformers pickles its TrainingArguments next to the weights; the artifact keeps
            # safetensors and JSON only (config.json records every setting)
            (self.output_model_dir / "training_args.bin").unlink(missing_ok=True)
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
        common = {"output_dir": str(self.checkpoint_dir), **trainer_fields(h, held_out and bool(self.data.eval))}
        return config_cls(**{**common, **stage_specific, **extra})
