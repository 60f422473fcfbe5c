"""Mixed precision: resolve `auto` for this machine, and the matching autocast context."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from alignlab.errors import ConfigError


def mixed_precision(setting: str) -> str:
    """Resolve `auto` to bf16 autocast where it is native (bf16 GPUs, AVX512-BF16/AMX CPUs), else no."""
    if setting != "auto":
        if setting not in ("no", "bf16", "fp16"):
            raise ConfigError(f"stage mixed_precision '{setting}' is not one of auto, no, bf16, fp16")
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"


def autocast(precision: str):
    """bf16/fp16 autocast on the model's device type, or nothing."""
    if precision == "no":
        return nullcontext()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
