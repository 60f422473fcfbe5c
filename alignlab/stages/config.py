"""Structured configs of the `stage` Hydra group: hyperparameters of each stage kind."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from alignlab.schema import each_one_of, one_of, within

PRECISIONS = ("auto", "no", "bf16", "fp16")
# trl 1.16 DPOConfig.loss_type (its help text lists them; trl keeps no list in code).
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


def scheduler_types() -> list:
    from transformers.trainer_utils import SchedulerType

    return [s.value for s in SchedulerType]


def optimizer_names() -> list:
    from transformers.training_args import OptimizerNames

    return [o.value for o in OptimizerNames]


@dataclass
class TrainerConfig:
    """Training-loop settings every trainer-based stage shares (mapped onto transformers' TrainingArguments)."""

    learning_rate: float = within(2e-4, gt=0)
    num_train_epochs: float = within(1.0, gt=0)
    max_steps: int = within(-1, ge=1, unset=(-1,))  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = within(4, ge=1)
    per_device_eval_batch_size: int = within(8, ge=1)
    gradient_accumulation_steps: int = within(1, ge=1)
    lr_scheduler_type: str = one_of("cosine", source=scheduler_types)
    warmup_steps: float = within(0.0, ge=0)  # >= 1: steps; < 1: fraction of all training steps
    weight_decay: float = within(0.0, ge=0)
    max_grad_norm: float = within(1.0, ge=0)  # 0: no clipping
    optim: str = one_of("adamw_torch", source=optimizer_names)
    adam_beta1: float = within(0.9, ge=0, lt=1)  # Adam/AdamW moment decay rates and epsilon
    adam_beta2: float = within(0.999, ge=0, lt=1)
    adam_epsilon: float = within(1e-8, gt=0)
    disable_dropout: bool = False  # every dropout of the model and its adapter off while training
    mixed_precision: str = one_of("auto", *PRECISIONS)  # auto: bf16 where the GPU/CPU computes it natively
    gradient_checkpointing: bool = False
    on_too_long: str = one_of("truncate", "truncate", "drop", "error")  # rows over max_length tokens (counted)
    logging_steps: int = within(5, ge=1)
    eval_steps: Optional[int] = within(None, ge=1)  # None: evaluate once at the end only
    save_steps: int = within(50, ge=1)  # checkpoint interval (resume point after an interruption)
    collapse_patience: int = within(3, ge=0)  # logging steps of a collapse signal before the node stops; 0: off
    collapse_tolerance: float = within(0.05, gt=0)  # nats from ln(vocabulary size) that count as uniform
    seed: int = 42
    extra: Dict[str, Any] = field(default_factory=dict)  # any further trl/transformers config field


@dataclass
class SFTStageConfig(TrainerConfig):
    """Supervised fine-tuning on conversations (trl SFTTrainer)."""

    max_length: int = within(1024, ge=1)
    # Which tokens the loss covers: every assistant turn | the final assistant reply only | all tokens
    loss_scope: str = one_of("assistant", "assistant", "completion", "all")
    packing: bool = False
    merge_export: bool = False  # also write the adapter merged into the base weights (merged/)


@dataclass
class RewardStageConfig(TrainerConfig):
    """Bradley-Terry reward model on preference pairs (trl RewardTrainer), 1-logit score head."""

    learning_rate: float = within(1e-4, gt=0)
    max_length: int = within(512, ge=1)
    # Prompt token budget (None: none): a longer prompt keeps its end (the final user turn and the
    # generation prompt) or its start, in every pair or only in pairs over max_length
    # (alignlab.stages.prompts); responses are never cut by it.
    max_prompt_length: Optional[int] = within(None, ge=1)
    on_long_prompt: str = one_of("keep_end", "keep_end", "keep_start")
    cut_prompts: str = one_of("always", "always", "over_max_length")
    center_rewards_coefficient: Optional[float] = within(None, ge=0)  # e.g. 0.01 keeps rewards centred on 0
    # After training, shift every score so the chosen replies of the first `normalize_rows` training
    # pairs (the reference set: demonstrations, as InstructGPT normalises) score 0 on average; 0: off.
    normalize_rows: int = within(0, ge=0)
    disable_dropout: bool = True
    score_batch_size: int = within(8, ge=1)  # batch size of held-out scoring (accuracy, margins)
    # A batch element is a prompt with all its pairs (e.g. data ranked_pairs=all: every comparison of
    # its ranked replies), each distinct response scored once and the loss averaged over the prompt's
    # comparisons (InstructGPT); per_device_train_batch_size then counts prompts.
    batch_by_prompt: bool = False


@dataclass
class DPOStageConfig(TrainerConfig):
    """Direct preference optimisation (trl DPOTrainer); the reference is the frozen starting adapter."""

    learning_rate: float = within(5e-5, gt=0)
    beta: float = within(0.1, gt=0)  # a negative beta trains toward the rejected answers
    loss_type: List[str] = each_one_of(lambda: ["sigmoid"], *DPO_LOSSES)
    loss_weights: Optional[List[float]] = None  # weights when several loss types are combined
    label_smoothing: float = within(0.0, ge=0, lt=0.5)  # conservative DPO / robust DPO noise rate
    max_length: int = within(512, ge=1)
    # Prompt token budget (None: none): a longer prompt keeps its end (the final user turn and the
    # generation prompt) or its start, in every pair or only in pairs over max_length
    # (alignlab.stages.prompts); responses are never cut by it.
    max_prompt_length: Optional[int] = within(None, ge=1)
    on_long_prompt: str = one_of("keep_end", "keep_end", "keep_start")
    cut_prompts: str = one_of("always", "always", "over_max_length")
    precompute_ref_log_probs: bool = False  # score the reference once up front instead of every step
    disable_dropout: bool = True


@dataclass
class PPOStageConfig:
    """PPO against a reward node or a programmatic reward (alignlab.rl; trl 1.x has no PPO).

    Defaults follow "The N Implementation Details of RLHF with PPO" (Huang et al. 2024): k1 KL
    penalty per token, no discount, lambda 0.95, advantage whitening, EOS penalty, 4 PPO epochs.
    """

    learning_rate: float = within(3e-5, gt=0)  # the policy's; value_learning_rate None: the value's too
    value_learning_rate: Optional[float] = within(None, gt=0)  # the value adapter and head's own rate
    lr_scheduler_type: str = one_of("constant", "constant", "linear")  # linear: to 0 over `iterations`
    warmup_iterations: int = within(0, ge=0)  # lr rises linearly from warmup_start_factor x over these
    warmup_start_factor: float = within(0.1, gt=0, le=1)
    adam_beta1: float = within(0.9, ge=0, lt=1)
    adam_beta2: float = within(0.999, ge=0, lt=1)
    adam_epsilon: float = within(1e-5, gt=0)
    policy_ema: Optional[float] = within(None, gt=0, lt=1)  # set: the saved policy is this EMA of its weights
    iterations: int = within(100, ge=1)  # rollout + update rounds
    rollout_batch_size: int = within(16, ge=1)  # prompts sampled per iteration (per process)
    mini_batch_size: int = within(8, ge=1)  # samples per optimizer step
    gradient_accumulation_steps: int = within(1, ge=1)  # micro-batches per minibatch
    ppo_epochs: int = within(4, ge=1)  # passes over each rollout batch
    max_prompt_length: int = within(256, ge=1)  # prompt token budget of the rollouts
    # A longer prompt is left out (counted in the log), keeps its end (the final user turn and the
    # generation prompt) or keeps its start (alignlab.stages.prompts); the reward reads it whole.
    on_long_prompt: str = one_of("drop", "drop", "keep_end", "keep_start")
    max_new_tokens: int = within(64, ge=1)
    temperature: float = within(0.7, gt=0)
    top_k: int = within(0, ge=0)  # 0 (off) only: PPO samples from the full softmax its log-probs assume
    top_p: float = within(1.0, gt=0, le=1)  # 1.0 (off) only, as top_k
    missing_eos_penalty: Optional[float] = 1.0  # for responses without EOS, as missing_eos_mode says
    missing_eos_mode: str = one_of("subtract", "subtract", "replace")  # replace: their score is -penalty
    kl_estimator: str = one_of("k1", "k1", "k3")  # the logged `kl` the adaptive controller follows; the penalty is k1
    kl_coef: float = within(0.05, ge=0)  # initial coefficient of the per-token KL penalty
    kl_target: Optional[float] = within(None, gt=0)  # set: adaptive KL controller (Ziegler et al.) toward this KL
    kl_horizon: int = within(10000, ge=1)
    gamma: float = within(1.0, ge=0, le=1)
    lam: float = within(0.95, ge=0, le=1)
    whiten_advantages: bool = True
    whiten_rewards: bool = False  # whiten the per-token rewards over each rollout batch, mean kept (as trl)
    reward_clip: Optional[float] = within(None, gt=0)  # clamp scores to +-reward_clip
    clip_range: float = within(0.2, gt=0)
    clip_range_value: float = within(0.2, gt=0)
    vf_coef: float = within(0.1, ge=0)
    max_grad_norm: float = within(1.0, ge=0)  # 0: no clipping
    weight_decay: float = within(0.0, ge=0)
    reference: str = one_of("sft", "sft", "base")  # sft: frozen copy of the starting policy adapter | base: adapters disabled
    value_init: str = one_of("reward", "reward", "fresh")  # reward: value adapter and head start from the reward node
    reward_fn: Dict[str, Any] = field(default_factory=dict)  # {_target_: module.fn, **kwargs}; empty: reward node
    reward_max_length: int = within(512, ge=1)  # tokens of prompt + response the reward model reads
    mixed_precision: str = one_of("auto", *PRECISIONS)
    gradient_checkpointing: bool = False  # recompute layer activations in the backward passes (less memory)
    merge_for_generation: bool = True  # sample with the policy adapter merged into fp32 base weights (not 4-bit/bf16)
    logging_steps: int = within(1, ge=1)
    save_steps: int = within(10, ge=1)  # checkpoint interval in iterations
    sample_responses: int = within(4, ge=0)  # responses per iteration kept in samples.jsonl
    collapse_patience: int = within(3, ge=0)  # logging steps of zero gradient norm before the node stops; 0: off
    seed: int = 42


def dpo_problems(cfg, name: str, h, checked) -> List[str]:
    """Preflight of a DPO node: one weight per combined loss type."""
    if h.loss_weights is not None and len(h.loss_weights) != len(h.loss_type):
        own = {"loss_weights", "loss_type"} & set(cfg.pipeline.nodes[name].hparams)
        where = f"pipeline.nodes.{name}.hparams" if own else "stage.dpo"
        return [f"{where}.loss_weights: {len(h.loss_weights)} weight(s) for {len(h.loss_type)} loss type(s) "
                f"in {where}.loss_type"]
    return []


def ppo_sampling_problems(h, precision: str) -> List[str]:
    """Settings under which PPO's log-probs or gradients would not be what its updates assume
    (`precision`: the resolved mixed_precision)."""
    problems = []
    for key, off in (("top_k", 0), ("top_p", 1.0)):
        if h[key] != off:
            problems.append(f"stage.ppo.{key}={h[key]}: PPO samples from the full softmax at `temperature`, the "
                            f"distribution its log-probs and KL are computed under; set stage.ppo.{key}={off:g}")
    if precision == "fp16":
        setting = "fp16" if h.mixed_precision == "fp16" else f"{h.mixed_precision} (fp16 on this machine)"
        problems.append(f"stage.ppo.mixed_precision={setting}: PPO does not train in fp16 (it has no loss "
                        "scaling); set stage.ppo.mixed_precision=no, or bf16 where the hardware has it")
    return problems


def ppo_problems(cfg, name: str, h, checked) -> List[str]:
    """Preflight of a PPO node: exactly one reward source, a resolvable reward function, enough prompts,
    sampling and precision its updates can use."""
    from omegaconf import OmegaConf

    from alignlab.errors import AlignlabError
    from alignlab.models.precision import mixed_precision
    from alignlab.rl import rewards

    problems = []
    if (cfg.pipeline.nodes[name].get("reward") is None) == (not h.reward_fn):
        problems.append(f"pipeline.nodes.{name}: a ppo node needs exactly one reward source: a `reward:` "
                        "upstream node or stage.ppo.reward_fn")
    elif h.reward_fn:
        try:
            rewards.resolve(OmegaConf.to_container(h.reward_fn, resolve=True))
        except AlignlabError as err:
            problems.append(str(err))
    data = checked.data.get(name)
    if data is not None and len(data.train) < h.rollout_batch_size:
        problems.append(f"pipeline.nodes.{name}: {len(data.train)} training prompt(s) in "
                        f"data.{checked.data_names[name]}, fewer than stage.ppo.rollout_batch_size="
                        f"{h.rollout_batch_size}")
    if h.missing_eos_mode == "replace" and h.missing_eos_penalty is None:
        problems.append("stage.ppo.missing_eos_mode=replace: set stage.ppo.missing_eos_penalty (the score of a "
                        "response without EOS becomes its negative)")
    return problems + ppo_sampling_problems(h, mixed_precision(h.mixed_precision))


# trl 1.16 GRPOConfig.loss_type (its help text lists them; trl keeps no list in code).
GRPO_LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
REWARD_NODE = "reward_model"  # the reward node's name among a grpo/rloo node's reward functions


@dataclass
class OnlineRLStageConfig(TrainerConfig):
    """Settings grpo and rloo share (trl GRPOTrainer / RLOOTrainer): the policy samples
    `num_generations` completions per prompt, rewards score them, each is reinforced by its
    advantage within its group. `per_device_train_batch_size` counts completions, not prompts."""

    learning_rate: float = within(1e-5, gt=0)
    per_device_train_batch_size: int = within(8, ge=1)
    num_generations: int = within(8, ge=2)  # completions per prompt (the group)
    max_completion_length: int = within(256, ge=1)
    max_prompt_length: int = within(512, ge=1)  # prompt tokens; longer prompts are dropped (counted) or an error
    on_too_long: str = one_of("drop", "drop", "error")  # trl 1.16 cuts no prompt, so none is truncated
    temperature: float = within(1.0, gt=0)
    beta: float = within(0.0, ge=0)  # KL coefficient against the reference; 0: no reference is kept
    epsilon: float = within(0.2, gt=0)  # clip range of the probability ratio
    epsilon_high: Optional[float] = within(None, gt=0)  # upper clip range (DAPO's clip-higher); None: epsilon
    num_iterations: int = within(1, ge=1)  # passes over each generated batch (mu)
    # Micro-batches each generated batch is split into (None: gradient_accumulation_steps, i.e. one
    # optimizer step per generated batch); more: several updates per generation, off-policy after the first.
    steps_per_generation: Optional[int] = within(None, ge=1)
    mask_truncated_completions: bool = False  # completions cut at max_completion_length leave the loss
    # name -> {_target_: module.fn, **kwargs}: fn(prompts, responses, **columns) -> list[float]; it is
    # also passed each prompt row's fields it names (e.g. `reference`) and `finished` (ended with EOS).
    reward_fns: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    reward_weights: Dict[str, float] = field(default_factory=dict)  # name -> weight (default 1); reward node: reward_model
    reward_max_length: int = within(512, ge=1)  # tokens of prompt + completion the reward node reads
    score_batch_size: int = within(8, ge=1)
    sample_responses: int = within(4, ge=0)  # completions per generated batch kept in samples.jsonl
    disable_dropout: bool = True  # sampling and update log-probs must match
    # A batch whose groups all have equal rewards has exactly zero gradient: no signal, not a collapse.
    collapse_patience: int = within(0, ge=0)
    logging_steps: int = within(1, ge=1)


@dataclass
class GRPOStageConfig(OnlineRLStageConfig):
    """Group relative policy optimisation (trl GRPOTrainer; Shao et al. 2024) and its loss variants."""

    loss_type: str = one_of("dapo", *GRPO_LOSSES)  # token aggregation: grpo (per sequence), dr_grpo, dapo, bnpo, ...
    scale_rewards: str = one_of("group", "group", "batch", "none")  # divide advantages by the group's/batch's std


@dataclass
class RLOOStageConfig(OnlineRLStageConfig):
    """REINFORCE leave-one-out (trl RLOOTrainer; Ahmadian et al. 2024): baseline = the other completions' mean."""

    beta: float = within(0.05, ge=0)  # trl's default
    normalize_advantages: bool = False


def online_rl_problems(cfg, name: str, h, checked) -> List[str]:
    """Preflight of a grpo/rloo node: a reward source, resolvable reward functions whose row fields the
    data has, weights naming rewards, whole prompt groups per generation batch, enough prompts."""
    import inspect
    import os

    from omegaconf import OmegaConf

    from alignlab.errors import AlignlabError
    from alignlab.rl import rewards

    node = cfg.pipeline.nodes[name]
    own = set(node.hparams)
    where = lambda key: f"pipeline.nodes.{name}.hparams.{key}" if key in own else f"stage.{node.stage}.{key}"  # noqa: E731
    problems, names = [], list(h.reward_fns) + ([REWARD_NODE] if node.get("reward") else [])
    if not names:
        problems.append(f"pipeline.nodes.{name}: a {node.stage} node needs a reward: a `reward:` upstream node "
                        f"and/or {where('reward_fns')}")
    if REWARD_NODE in h.reward_fns:
        problems.append(f"{where('reward_fns')}.{REWARD_NODE}: the name is the reward node's; choose another")
    data = checked.data.get(name)
    columns = set.intersection(*(set(r) for r in data.train)) - {"prompt"} if data is not None else None
    for fn_name, spec in h.reward_fns.items():
        key = f"{where('reward_fns')}.{fn_name}"
        try:
            fn = rewards.resolve(OmegaConf.to_container(spec, resolve=True), key=key)
        except AlignlabError as err:
            problems.append(str(err))
            continue
        needed = [p.name for p in list(inspect.signature(fn).parameters.values())[2:]
                  if p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD and p.name != "finished"]
        missing = [p for p in needed if columns is not None and p not in columns]
        if missing:
            problems.append(f"{key}: {spec['_target_']} needs the field(s) {missing} of every prompt row; "
                            f"data.{checked.data_names[name]} has {sorted(columns) or 'none'}")
    unknown = sorted(set(h.reward_weights) - set(names))
    if unknown:
        problems.append(f"{where('reward_weights')}: {unknown} name no reward of this node (rewards: {names})")
    if h.epsilon_high is not None and h.epsilon_high < h.epsilon:
        problems.append(f"{where('epsilon_high')}={h.epsilon_high} is below {where('epsilon')}={h.epsilon}")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    steps = ("steps_per_generation", h.steps_per_generation) if h.steps_per_generation else (
        "gradient_accumulation_steps", h.gradient_accumulation_steps)
    batch = h.per_device_train_batch_size * steps[1] * processes
    if batch % h.num_generations:
        problems.append(f"{where('per_device_train_batch_size')}={h.per_device_train_batch_size} x "
                        f"{steps[0]}={steps[1]} x {processes} process(es) = "
                        f"{batch} completions per generation batch, not a multiple of {where('num_generations')}="
                        f"{h.num_generations} (trl samples whole groups)")
    elif data is not None and len(data.train) < batch // h.num_generations:
        problems.append(f"pipeline.nodes.{name}: {len(data.train)} training prompt(s) in data."
                        f"{checked.data_names[name]}, fewer than the {batch // h.num_generations} of one "
                        "generation batch")
    return problems


# --- reference-free and unpaired preference losses (KTO, ORPO, SimPO) -----------------------------

KTO_LOSSES = ("kto", "apo_zero_unpaired")  # trl 1.16 KTOConfig.loss_type choices
# KTO's guidance on class weights (Ethayarajh et al. 2024, Eq. 8): desirable_weight x n_desirable /
# (undesirable_weight x n_undesirable) in [1, 4/3].
KTO_WEIGHT_RATIO = (1.0, 4 / 3)


@dataclass
class KTOStageConfig(TrainerConfig):
    """Kahneman-Tversky optimisation (trl KTOTrainer) on unpaired rows derived from preference pairs:
    chosen -> desirable, rejected -> undesirable; the reference is the frozen starting adapter."""

    learning_rate: float = within(5e-5, gt=0)
    beta: float = within(0.1, gt=0)
    desirable_weight: float = within(1.0, gt=0)  # lambda_D
    undesirable_weight: float = within(1.0, gt=0)  # lambda_U
    loss_type: str = one_of("kto", *KTO_LOSSES)
    max_length: int = within(512, ge=1)
    precompute_ref_log_probs: bool = False
    disable_dropout: bool = True


@dataclass
class ORPOStageConfig(TrainerConfig):
    """Odds-ratio preference optimisation (trl.experimental ORPOTrainer): SFT loss on the chosen reply
    plus beta (the paper's lambda) x the log odds-ratio loss; no reference model."""

    learning_rate: float = within(5e-5, gt=0)
    beta: float = within(0.1, gt=0)  # lambda in Hong et al. 2024
    max_length: int = within(512, ge=1)
    disable_dropout: bool = True


@dataclass
class SimPOStageConfig(TrainerConfig):
    """Simple preference optimisation (trl.experimental CPOTrainer, loss_type simpo): length-normalised
    log-likelihood margins against the target margin simpo_gamma; no reference model."""

    learning_rate: float = within(5e-5, gt=0)
    beta: float = within(2.0, gt=0)
    simpo_gamma: float = within(1.0, ge=0)  # target reward margin (gamma; Meng et al. tune gamma / beta)
    cpo_alpha: float = within(0.0, ge=0)  # weight of an NLL term on the chosen reply (CPO-SimPO); 0: SimPO
    label_smoothing: float = within(0.0, ge=0, lt=0.5)
    max_length: int = within(512, ge=1)
    disable_dropout: bool = True


def _setting(cfg, name: str, key: str) -> str:
    """Where a node's setting is written: its own hparams or the stage block."""
    return (f"pipeline.nodes.{name}.hparams.{key}" if key in cfg.pipeline.nodes[name].hparams
            else f"stage.{cfg.pipeline.nodes[name].stage}.{key}")


def kto_problems(cfg, name: str, h, checked) -> List[str]:
    """Preflight of a KTO node: the KL reference point needs two rows per batch; class weights outside
    the paper's range are logged as a warning (a deliberate choice stays possible)."""
    import logging

    problems = []
    if h.loss_type == "kto" and h.per_device_train_batch_size < 2:
        problems.append(f"{_setting(cfg, name, 'per_device_train_batch_size')}: {h.per_device_train_batch_size}; "
                        "KTO estimates its KL reference point from the other rows of a batch, so it needs >= 2")
    # Rows derived from pairs are balanced (as many desirable as undesirable), so the ratio is the weights'.
    ratio = h.desirable_weight / h.undesirable_weight
    low, high = KTO_WEIGHT_RATIO
    if not low <= ratio <= high:
        logging.getLogger("alignlab.preflight").warning(
            "node %s: %s / %s = %.3g is outside [1, 4/3], the range Ethayarajh et al. 2024 (Eq. 8) recommend for "
            "desirable_weight x n_desirable / (undesirable_weight x n_undesirable) on balanced data",
            name, _setting(cfg, name, "desirable_weight"), _setting(cfg, name, "undesirable_weight"), ratio)
    return problems


# --- online DPO ------------------------------------------------------------------------------------

ONLINE_DPO_LABELERS = ("judge", "reward")


@dataclass
class OnlineDPOStageConfig(TrainerConfig):
    """Online DPO (Guo et al. 2024; trl.experimental OnlineDPOTrainer): the policy samples two completions per
    prompt, alignlab's judge (both orders) or a reward node labels each pair, pairs it cannot label are skipped
    and counted, then a DPO step on the labelled pairs against the frozen starting policy.
    `per_device_train_batch_size` counts prompts (pairs)."""

    learning_rate: float = within(5e-5, gt=0)
    labeler: str = one_of("judge", *ONLINE_DPO_LABELERS)  # judge: the `judge` group's judge | reward: the `reward:` node
    beta: float = within(0.1, gt=0)
    loss_type: str = one_of("sigmoid", "sigmoid", "ipo")
    max_new_tokens: int = within(64, ge=1)  # tokens per sampled completion
    temperature: float = within(0.9, gt=0)
    max_prompt_length: int = within(512, ge=1)  # prompt tokens; longer prompts are dropped (counted) or an error
    on_too_long: str = one_of("drop", "drop", "error")  # trl cuts no prompt, so none is truncated
    reward_max_length: int = within(512, ge=1)  # tokens of prompt + completion the reward node reads
    score_batch_size: int = within(8, ge=1)
    disable_dropout: bool = True
    # A batch whose pairs were all skipped has exactly zero gradient: no label, not a collapse.
    collapse_patience: int = within(0, ge=0)
    logging_steps: int = within(1, ge=1)


def online_dpo_problems(cfg, name: str, h, checked) -> List[str]:
    """Preflight of an online_dpo node: its labeler is there (the judge on, or a `reward:` upstream node), and
    the data has the prompts of one batch."""
    node, labeler = cfg.pipeline.nodes[name], _setting(cfg, name, "labeler")
    problems = []
    if h.labeler == "judge" and not cfg.judge.enabled:
        problems.append(f"{labeler}=judge: the judge is off (judge=none); choose judge=local or judge=openai, or "
                        f"{labeler}=reward with a `reward:` upstream node")
    if h.labeler == "judge" and node.get("reward") is not None:
        problems.append(f"pipeline.nodes.{name}.reward: '{node.reward}' labels nothing with {labeler}=judge; "
                        f"remove it or set {labeler}=reward")
    if h.labeler == "reward" and node.get("reward") is None:
        problems.append(f"{labeler}=reward: pipeline.nodes.{name} has no `reward:` upstream node to label with")
    data = checked.data.get(name)
    if data is not None and len(data.train) < h.per_device_train_batch_size:
        problems.append(f"pipeline.nodes.{name}: {len(data.train)} training prompt(s) in data."
                        f"{checked.data_names[name]}, fewer than {_setting(cfg, name, 'per_device_train_batch_size')}"
                        f"={h.per_device_train_batch_size}")
    return problems
