"""Chat templates for base models that ship without one (`model.chat_template`).

Each renders a conversation the way a recipe trains it and wraps assistant turns in
`{% generation %}` markers (they render nothing) so trl can restrict the loss to assistant tokens.
Every assistant turn ends with the tokenizer's EOS so the model learns to stop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from alignlab.errors import ModelLoadError


EOS = "<eos>"  # stands for the tokenizer's EOS token in the prefixes and suffixes below


def _expr(text: str) -> str:
    """A jinja expression for literal `text` in which EOS marks the tokenizer's EOS token."""
    return " + eos_token + ".join(repr(piece) for piece in text.split(EOS))


def _template(turns: dict, generation_prompt: str) -> str:
    """A template from per-role (prefix, suffix) pairs; assistant answers end with EOS."""
    parts = ["{% for message in messages %}"]
    for i, (role, (prefix, suffix)) in enumerate(turns.items()):
        parts.append(("{% if" if i == 0 else "{% elif") + f" message['role'] == '{role}' %}}")
        if role == "assistant":
            parts.append(f"{{{{ {_expr(prefix)} }}}}{{% generation %}}{{{{ message['content'] + eos_token }}}}"
                         f"{{% endgeneration %}}{{{{ {_expr(suffix)} }}}}")
        else:
            parts.append(f"{{{{ {_expr(prefix)} + message['content'] + {_expr(suffix)} }}}}")
    parts.append("{% endif %}{% endfor %}")
    parts.append(f"{{% if add_generation_prompt %}}{{{{ {_expr(generation_prompt)} }}}}{{% endif %}}")
    return "".join(parts)


TEMPLATES = {
    # <|im_start|>role ... <|im_end|> turns (ChatML), EOS closing each answer.
    "chatml": _template({"system": ("<|im_start|>system\n", "<|im_end|>\n"),
                         "user": ("<|im_start|>user\n", "<|im_end|>\n"),
                         "assistant": ("<|im_start|>assistant\n", "\n")}, "<|im_start|>assistant\n"),
    # Zephyr / alignment-handbook: <|system|>, <|user|>, <|assistant|> headers.
    "zephyr": _template({"system": ("<|system|>\n", EOS + "\n"), "user": ("<|user|>\n", EOS + "\n"),
                         "assistant": ("<|assistant|>\n", "\n")}, "<|assistant|>\n"),
    # Anthropic HH-RLHF transcripts: "\n\nHuman: ...\n\nAssistant: ...".
    "hh": _template({"system": ("", ""), "user": ("\n\nHuman: ", ""), "assistant": ("\n\nAssistant: ", "")},
                    "\n\nAssistant:"),
    # QLoRA's Guanaco: "### Human: ...### Assistant: ...".
    "guanaco": _template({"system": ("", ""), "user": ("### Human: ", ""), "assistant": ("### Assistant: ", "")},
                         "### Assistant:"),
    # Raw text: the prompt as it is, the answer right after it (e.g. TL;DR summarisation).
    "plain": _template({"system": ("", "\n"), "user": ("", ""), "assistant": ("", "")}, ""),
}


def resolve_chat_template(spec: Optional[str]) -> Optional[str]:
    """`model.chat_template`: None (the tokenizer's own), a name in TEMPLATES, or a .jinja file."""
    if spec is None:
        return None
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    path = Path(spec).expanduser()
    if path.suffix in (".jinja", ".j2") and path.is_file():
        return path.read_text(encoding="utf-8")
    raise ModelLoadError(f"model.chat_template '{spec}' is neither one of {', '.join(TEMPLATES)} "
                         "nor an existing .jinja file")
