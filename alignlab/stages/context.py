"""What the pipeline hands a stage (`StageContext`), a finished node's artifact, and the collapse
watch every training loop feeds. The trl toolkit the trainer-based recipes share is
`alignlab.stages.trl_recipe`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from alignlab.errors import TrainingCollapsedError

if TYPE_CHECKING:
    from alignlab.tracking import NodeTracker

CHECKPOINTS = "checkpoints"  # a node's resumable state, under its work directory (not published)


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
    import torch

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


@dataclass
class StageContext:
    """Inputs of one stage run: its settings, data, upstream artifacts, tracker and work directory."""

    node: str
    stage: str
    hparams: DictConfig  # stage.<kind> with the node's own hparams merged
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
        return self.work_dir / CHECKPOINTS

    @property
    def output_model_dir(self) -> Path:
        """adapter/ for LoRA, model/ for full fine-tuning."""
        return self.work_dir / ("adapter" if self.cfg.peft.method != "none" else "model")
