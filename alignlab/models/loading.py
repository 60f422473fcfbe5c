"""The one model loader every stage uses: base weights, quantization, LoRA adapters and heads."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from alignlab.errors import ModelLoadError
from alignlab.models.chat_templates import TEMPLATES, resolve_chat_template
from alignlab.models.config import ModelConfig, PeftConfig, QuantConfig
from alignlab.models.embedded import embedded_model_dir, is_embedded

HEADS = ("causal_lm", "score")  # score: a 1-logit sequence-classification head (reward / value)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(cfg: ModelConfig, model_cache: str) -> str:
    """Local directory for embedded models and paths; the hub id otherwise."""
    name = cfg.name_or_path
    if is_embedded(name):
        return str(embedded_model_dir(name, model_cache))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory '{name}' has no config.json")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise ModelLoadError(f"model path '{name}' does not exist")
    return name  # a hub id


def torch_dtype(cfg: ModelConfig) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if cfg.dtype not in _DTYPES:
        raise ModelLoadError(f"model.dtype '{cfg.dtype}' is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[cfg.dtype]


def _device_map(cfg: ModelConfig):
    if cfg.device_map == "auto":
        if not torch.cuda.is_available():
            return None
        # Under accelerate/DDP each process places the whole model on its own GPU.
        local_rank = os.environ.get("LOCAL_RANK")
        return {"": int(local_rank)} if local_rank is not None else "auto"
    return cfg.device_map


def _quantization_config(quant: QuantConfig, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quant.method == "none":
        return None
    if quant.method == "bnb_4bit":
        compute = dtype if quant.compute_dtype == "auto" else _DTYPES[quant.compute_dtype]
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.quant_type,
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=compute,
        )
    if quant.method == "bnb_8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ModelLoadError(f"quant.method '{quant.method}' is not one of none, bnb_4bit, bnb_8bit")


def _hub_kwargs(cfg: ModelConfig) -> dict:
    return {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}


def _from_pretrained(loader, path: str, cfg: ModelConfig, **kwargs):
    try:
        return loader.from_pretrained(path, **_hub_kwargs(cfg), **kwargs)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = "HF_HUB_OFFLINE is set, so the hub is not contacted" if offline else "the hub could not be reached"
        raise ModelLoadError(
            f"cannot load model '{cfg.name_or_path}': not a local directory and {hint} "
            f"(use a local path or an embedded: model). Cause: {err}"
        ) from err


def load_tokenizer(cfg: ModelConfig, model_cache: str):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, resolve_model_path(cfg, model_cache), cfg)
    template = resolve_chat_template(cfg.chat_template)
    if template is not None:
        tokenizer.chat_template = template
    if not tokenizer.chat_template:
        raise ModelLoadError(f"model '{cfg.name_or_path}' has no chat template: set model.chat_template "
                             f"(one of {', '.join(TEMPLATES)}, or a .jinja file)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(cfg: ModelConfig, quant: QuantConfig, model_cache: str, head: str = "causal_lm"):
    """Load the base model with a causal-LM head or a 1-logit score head, quantized as configured."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if head not in HEADS:
        raise ModelLoadError(f"unknown head '{head}'; known: {', '.join(HEADS)}")
    dtype = torch_dtype(cfg)
    kwargs = dict(
        dtype=dtype,
        device_map=_device_map(cfg),
        quantization_config=_quantization_config(quant, dtype),
        attn_implementation=cfg.attn_implementation,
    )
    path = resolve_model_path(cfg, model_cache)
    if head == "score":
        model = _from_pretrained(AutoModelForSequenceClassification, path, cfg, num_labels=1, **kwargs)
    else:
        model = _from_pretrained(AutoModelForCausalLM, path, cfg, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def lora_config(peft: PeftConfig, head: str = "causal_lm"):
    """The peft LoraConfig for this group; score heads are trained and saved with the adapter."""
    from peft import LoraConfig, TaskType

    targets = peft.target_modules
    modules_to_save = list(peft.modules_to_save or [])
    if head == "score" and "score" not in modules_to_save:
        modules_to_save.append("score")
    return LoraConfig(
        r=peft.r,
        lora_alpha=peft.alpha,
        lora_dropout=peft.dropout,
        target_modules="all-linear" if list(targets) == ["all-linear"] else list(targets),
        modules_to_save=modules_to_save or None,
        bias=peft.bias,
        use_rslora=peft.use_rslora,
        task_type=TaskType.SEQ_CLS if head == "score" else TaskType.CAUSAL_LM,
    )


def add_adapter(
    model,
    peft: PeftConfig,
    quant: QuantConfig,
    head: str = "causal_lm",
    gradient_checkpointing: bool = False,
    init_from: Optional[str | os.PathLike] = None,
):
    """Wrap `model` with a new trainable LoRA adapter (or leave it whole for full fine-tuning).

    `init_from` copies an upstream adapter's LoRA weights into the new adapter (same r and target
    modules): e.g. a reward model whose transformer starts from the SFT policy while its score
    head starts fresh.
    """
    from peft import get_peft_model

    if peft.method == "none":
        if quant.method != "none":
            raise ModelLoadError("a quantized base cannot be fully fine-tuned: set peft=lora")
        if init_from is not None:
            raise ModelLoadError("init from an upstream adapter needs peft=lora")
        return model
    if peft.method != "lora":
        raise ModelLoadError(f"peft.method '{peft.method}' is not one of lora, none")
    model = get_peft_model(_prepare_quantized(model, gradient_checkpointing), lora_config(peft, head))
    if init_from is not None:
        copy_lora_weights(model, Path(init_from))
    return model


def _prepare_quantized(model, gradient_checkpointing: bool = False):
    from peft import prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


# LoRA settings two adapters must share for one's weights to mean the same in the other
# (adapter_config.json key -> the peft group setting).
LORA_LAYOUT = {"lora_alpha": "alpha", "use_rslora": "use_rslora", "bias": "bias", "target_modules": "target_modules"}


def _lora_layout(config: dict) -> dict:
    layout = {key: config.get(key) for key in LORA_LAYOUT}
    targets = layout["target_modules"]
    layout["target_modules"] = targets if targets is None or isinstance(targets, str) else sorted(targets)
    return layout


def copy_lora_weights(model, adapter_dir: Path, adapter_name: str = "default") -> None:
    """Copy a saved adapter's LoRA weights into `adapter_name` of `model`: same weight names and
    shapes, and the same scaling, bias and target modules (else the copy would compute another function)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    weights_file, config_file = adapter_dir / "adapter_model.safetensors", adapter_dir / "adapter_config.json"
    if not weights_file.is_file() or not config_file.is_file():
        raise ModelLoadError(f"no adapter weights and config at '{adapter_dir}'")
    theirs = _lora_layout(json.loads(config_file.read_text()))
    ours = _lora_layout(vars(model.peft_config[adapter_name]))
    differ = [f"{key} {theirs[key]} vs peft.{LORA_LAYOUT[key]} {ours[key]}" for key in LORA_LAYOUT
              if theirs[key] != ours[key]]
    if differ:
        raise ModelLoadError(f"adapter '{adapter_dir}' was trained with other LoRA settings than this model's "
                             f"(same peft group needed): {'; '.join(differ)}")
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)  # heads (modules_to_save) kept as they are
    lora = {k: v for k, v in load_file(str(weights_file)).items() if ".lora_" in k}
    ours = {k for k in state if ".lora_" in k}
    if set(lora) != ours or any(state[k].shape != v.shape for k, v in lora.items()):
        raise ModelLoadError(
            f"adapter '{adapter_dir}' does not match this model's LoRA layout (same peft group needed): "
            f"{len(set(lora) ^ ours)} differing weight names"
        )
    set_peft_model_state_dict(model, {**state, **lora}, adapter_name=adapter_name)


def load_adapter(model, adapter_dir: str | os.PathLike, trainable: bool, adapter_name: str = "default"):
    """Put an upstream stage's saved adapter onto `model` (a base or a PeftModel already holding others)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelLoadError(f"no PEFT adapter in '{adapter_dir}' (adapter_config.json missing)")
    if isinstance(model, PeftModel):
        model.load_adapter(str(adapter_dir), adapter_name=adapter_name, is_trainable=trainable)
        return model
    if trainable:
        model = _prepare_quantized(model)
    return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name, is_trainable=trainable)


def disable_dropout(model) -> None:
    """Every dropout off: nn.Dropout modules (the model's and LoRA's), the rates attention modules
    copy from the config (applied inside the attention function, active in train mode), and every
    `*dropout` rate of the model's config."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            for key, value in list(vars(config).items()):
                if key.endswith("dropout") and isinstance(value, float):
                    setattr(config, key, 0.0)
