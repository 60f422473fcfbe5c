"""Model loading shared by every stage: embedded/local/hub bases, quantization, adapters, heads."""
from alignlab.models.config import ModelConfig, PeftConfig, QuantConfig
from alignlab.models.loading import (
    add_adapter,
    copy_lora_weights,
    load_adapter,
    load_base,
    load_tokenizer,
    lora_config,
    resolve_model_path,
    torch_dtype,
)

__all__ = [
    "ModelConfig",
    "PeftConfig",
    "QuantConfig",
    "add_adapter",
    "copy_lora_weights",
    "load_adapter",
    "load_base",
    "load_tokenizer",
    "lora_config",
    "resolve_model_path",
    "torch_dtype",
]
