"""The shared loader: embedded models, heads, quantization, adapters and the hub path."""
from __future__ import annotations

import pytest
import torch

from alignlab.errors import ModelLoadError
from alignlab.models import (
    ModelConfig,
    PeftConfig,
    QuantConfig,
    add_adapter,
    load_adapter,
    load_base,
    load_tokenizer,
)
from alignlab.models.embedded import SMOLLM2_TRAINING_TEMPLATE

TINY = ModelConfig(name_or_path="embedded:tiny-llama")
SMOL = ModelConfig(name_or_path="embedded:smollm2-135m-instruct")


def test_tiny_model_is_small_with_smollm2_chat_template(model_cache):
    tokenizer = load_tokenizer(TINY, model_cache)
    model = load_base(TINY, QuantConfig(), model_cache)
    assert model.config.num_hidden_layers == 2
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert model.dtype == torch.float32
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_training_template_renders_like_the_original(model_cache):
    """The generation markers must not change a single rendered character."""
    from jinja2 import Environment

    original = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
        "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    tokenizer = load_tokenizer(TINY, model_cache)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    for msgs in (messages, messages[1:]):
        expected = Environment().from_string(original).render(messages=msgs, add_generation_prompt=False)
        assert tokenizer.apply_chat_template(msgs, tokenize=False) == expected
    assert tokenizer.chat_template == SMOLLM2_TRAINING_TEMPLATE
    mask = tokenizer.apply_chat_template(messages[1:3], return_assistant_tokens_mask=True, return_dict=True)
    ids = [i for i, m in zip(mask["input_ids"], mask["assistant_masks"]) if m]
    assert tokenizer.decode(ids) == "4<|im_end|>"


@pytest.mark.parametrize("name, expected", [
    ("chatml", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
               "<|im_start|>assistant\n4<|im_end|>\n"),
    ("zephyr", "<|system|>\nBe brief.<|im_end|>\n<|user|>\n2+2?<|im_end|>\n<|assistant|>\n4<|im_end|>\n"),
    ("hh", "Be brief.\n\nHuman: 2+2?\n\nAssistant: 4<|im_end|>"),
    ("guanaco", "Be brief.### Human: 2+2?### Assistant: 4<|im_end|>"),
    ("plain", "Be brief.\n2+2?4<|im_end|>"),
])
def test_named_chat_templates_for_base_models(model_cache, name, expected):
    """model.chat_template replaces the tokenizer's; the assistant mask is the answer + EOS."""
    tokenizer = load_tokenizer(ModelConfig(name_or_path="embedded:tiny-llama", chat_template=name), model_cache)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert expected.startswith(prompt.rstrip(":"))
    rendered = tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    answer = [i for i, m in zip(rendered["input_ids"], rendered["assistant_masks"]) if m]
    assert tokenizer.decode(answer) == "4<|im_end|>"


def test_model_without_chat_template_needs_one(model_cache, tmp_path):
    base = load_tokenizer(TINY, model_cache)
    base.chat_template = None
    base.save_pretrained(tmp_path / "base")
    (tmp_path / "base" / "chat_template.jinja").unlink(missing_ok=True)
    load_base(TINY, QuantConfig(), model_cache).config.save_pretrained(tmp_path / "base")
    with pytest.raises(ModelLoadError, match="has no chat template: set model.chat_template"):
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path / "base")), model_cache)
    with pytest.raises(ModelLoadError, match="model.chat_template 'nope' is neither one of chatml"):
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path / "base"), chat_template="nope"), model_cache)
    template = tmp_path / "mine.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    mine = load_tokenizer(ModelConfig(name_or_path=str(tmp_path / "base"), chat_template=str(template)), model_cache)
    assert mine.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "x"


def test_score_head_and_lora_marks_head_trainable(model_cache):
    model = load_base(TINY, QuantConfig(), model_cache, head="score")
    assert model.score.out_features == 1
    peft_model = add_adapter(model, PeftConfig(r=4), QuantConfig(), head="score")
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable)
    assert any("lora_A" in n for n in trainable)


def test_qlora_4bit_trains_on_cpu(model_cache):
    import bitsandbytes as bnb

    quant = QuantConfig(method="bnb_4bit", quant_type="nf4", double_quant=True)
    model = load_base(TINY, quant, model_cache)
    assert isinstance(model.model.layers[0].mlp.down_proj, bnb.nn.Linear4bit)
    model = add_adapter(model, PeftConfig(r=4), quant)
    tokenizer = load_tokenizer(TINY, model_cache)
    batch = tokenizer(["The capital of France is Paris."], return_tensors="pt")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = [p.detach().clone() for p in lora_b]
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optim.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, lora_b))


def test_upstream_adapter_loads_frozen_or_trainable(model_cache, tmp_path):
    base = load_base(TINY, QuantConfig(), model_cache)
    model = add_adapter(base, PeftConfig(r=4), QuantConfig())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)
    model.save_pretrained(tmp_path / "adapter")
    model.eval()  # get_peft_model leaves train mode (LoRA dropout) on
    ids = torch.tensor([[1, 2, 3, 4]])
    expected = model(input_ids=ids).logits

    frozen = load_adapter(load_base(TINY, QuantConfig(), model_cache), tmp_path / "adapter", trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    torch.testing.assert_close(frozen(input_ids=ids).logits, expected)
    trainable = load_adapter(load_base(TINY, QuantConfig(), model_cache), tmp_path / "adapter", trainable=True)
    assert any(p.requires_grad for n, p in trainable.named_parameters() if "lora_" in n)
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        load_adapter(load_base(TINY, QuantConfig(), model_cache), tmp_path, trainable=False)


def test_lora_weights_copy_only_between_equal_lora_settings(model_cache, tmp_path):
    """The reward/value adapters start from another node's LoRA weights: scaling (alpha, rsLoRA),
    bias and target modules must match, or the copied weights would compute another function."""
    from alignlab.models.loading import copy_lora_weights

    def lora(peft: PeftConfig):
        return add_adapter(load_base(TINY, QuantConfig(), model_cache), peft, QuantConfig())

    source = lora(PeftConfig(r=4))
    with torch.no_grad():
        for n, p in source.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)
    source.save_pretrained(tmp_path / "adapter")
    same = lora(PeftConfig(r=4))
    copy_lora_weights(same, tmp_path / "adapter")
    expected = {n: p for n, p in source.named_parameters() if "lora_" in n}
    assert all(torch.equal(p, expected[n]) for n, p in same.named_parameters() if "lora_" in n)
    for peft, pattern in ((PeftConfig(r=4, alpha=8), r"lora_alpha 32 vs peft\.alpha 8"),
                          (PeftConfig(r=4, use_rslora=True), r"use_rslora False vs peft\.use_rslora True"),
                          (PeftConfig(r=4, bias="lora_only"), r"bias none vs peft\.bias lora_only"),
                          (PeftConfig(r=4, target_modules=["q_proj", "v_proj"]), r"target_modules \[.*\] vs "
                                                                                   r"peft\.target_modules \['q_proj', 'v_proj'\]")):
        with pytest.raises(ModelLoadError, match=r"adapter '.*adapter' was trained with other LoRA settings .*" + pattern):
            copy_lora_weights(lora(peft), tmp_path / "adapter")


def test_hub_id_offline_fails_clearly(model_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"some-org/some-model.*HF_HUB_OFFLINE"):
        load_tokenizer(ModelConfig(name_or_path="some-org/some-model"), model_cache)


def test_missing_local_path_and_unknown_embedded(model_cache, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_base(ModelConfig(name_or_path=str(tmp_path / "nope")), QuantConfig(), model_cache)
    with pytest.raises(ModelLoadError, match="unknown embedded model"):
        load_base(ModelConfig(name_or_path="embedded:gpt-17"), QuantConfig(), model_cache)


def test_embedded_smollm2_answers_a_factual_question(model_cache):
    tokenizer = load_tokenizer(SMOL, model_cache)
    model = load_base(SMOL, QuantConfig(), model_cache)
    assert "quantization_config" not in model.config.to_dict()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
