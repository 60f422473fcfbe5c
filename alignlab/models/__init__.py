"""Model loading shared by every stage: embedded/local/hub bases, quantization, adapters, heads.

The loaders live in `loading` (which imports torch) and are imported on first use, so reading the
configs (the CLI's composition and preflight) stays fast.
"""
from alignlab.models.config import ModelConfig, PeftConfig, QuantConfig

LOADERS = ("add_adapter", "copy_lora_weights", "disable_dropout", "load_adapter", "load_base", "load_tokenizer", "lora_config",
           "resolve_model_path", "torch_dtype")

__all__ = ["ModelConfig", "PeftConfig", "QuantConfig", *LOADERS]


def __getattr__(name: str):
    if name in LOADERS:
        from alignlab.models import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'alignlab.models' has no attribute '{name}'")
