"""Structured configs of the `model`, `quant` and `peft` Hydra groups."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from alignlab.schema import one_of, within


@dataclass
class ModelConfig:
    """Which base model to load and how to place it.

    `name_or_path` is an embedded model (`embedded:smollm2-135m-instruct`, `embedded:tiny-llama`),
    a local directory, or a Hugging Face hub id.
    """

    name_or_path: str = "embedded:smollm2-135m-instruct"
    revision: Optional[str] = None
    trust_remote_code: bool = False
    dtype: str = one_of("auto", "auto", "float32", "bfloat16", "float16")  # auto: fp32 on CPU, bf16 on CUDA
    device_map: Optional[str] = "auto"  # auto (None on CPU, "auto" on CUDA) | cpu | cuda | any HF device_map string
    attn_implementation: Optional[str] = None
    chat_template: Optional[str] = None  # None: the tokenizer's own | chatml | zephyr | hh | guanaco | plain | a .jinja file


@dataclass
class QuantConfig:
    """Weight quantization of the frozen base (bitsandbytes)."""

    method: str = one_of("none", "none", "bnb_4bit", "bnb_8bit")
    quant_type: str = one_of("nf4", "nf4", "fp4")  # 4-bit only
    double_quant: bool = True
    compute_dtype: str = one_of("auto", "auto", "float32", "bfloat16", "float16")  # auto follows the model dtype


@dataclass
class PeftConfig:
    """Parameter-efficient adapter trained on top of the base (LoRA)."""

    method: str = one_of("lora", "lora", "none")  # none: full fine-tuning
    r: int = within(16, ge=1)
    alpha: int = within(32, gt=0)
    dropout: float = within(0.05, ge=0, lt=1)
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])
    modules_to_save: Optional[List[str]] = None
    bias: str = one_of("none", "none", "all", "lora_only")
    use_rslora: bool = False
