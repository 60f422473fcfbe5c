"""SFT stage on the tiny model: what trains, what stays frozen, what reloads."""
from __future__ import annotations

import json

import torch

from alignlab.models import load_adapter, load_base, load_tokenizer
from alignlab.stages import sft
from conftest import TINY_SFT


def test_sft_trains_every_lora_param_and_only_those(compose, stage_context):
    ctx = stage_context(compose(*TINY_SFT))
    trainer = sft.build_trainer(ctx)
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora = [n for n in before if "lora_" in n]
    assert lora and all(model.get_parameter(n).requires_grad for n in lora)

    trainer.train()

    for name, old in before.items():
        changed = not torch.equal(old, model.get_parameter(name))
        assert changed == ("lora_" in name), f"{name}: changed={changed}"


def test_sft_masks_loss_to_assistant_tokens(compose, stage_context):
    ctx = stage_context(compose(*TINY_SFT))
    trainer = sft.build_trainer(ctx)
    ds = trainer.train_dataset
    shortest = min(range(len(ds)), key=lambda i: len(ds[i]["input_ids"]))
    labels = trainer.data_collator([ds[shortest]])["labels"][0]
    trained = trainer.processing_class.decode(labels[labels != -100])
    messages = ds[shortest]["messages"]
    assert messages[-1]["role"] == "assistant"
    assert trained == messages[-1]["content"] + "<|im_end|>"


def test_sft_run_saves_adapter_that_reproduces_logits(compose, stage_context):
    cfg = compose(*TINY_SFT)
    ctx = stage_context(cfg)
    metrics = sft.run(ctx)
    assert metrics["train_steps"] == 4 and "eval_loss" in metrics
    logged = [json.loads(line) for line in (ctx.work_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in logged) and any("eval_loss" in r for r in logged)

    tokenizer = load_tokenizer(cfg.model, cfg.paths.model_cache)
    reloaded = load_adapter(load_base(cfg.model, cfg.quant, cfg.paths.model_cache), ctx.work_dir / "adapter", trainable=False)
    base = load_base(cfg.model, cfg.quant, cfg.paths.model_cache)
    ids = tokenizer("Tell me a joke.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        tuned = reloaded(input_ids=ids).logits
        plain = base(input_ids=ids).logits
        again = load_adapter(load_base(cfg.model, cfg.quant, cfg.paths.model_cache), ctx.work_dir / "adapter", trainable=False)(input_ids=ids).logits
    assert not torch.allclose(tuned, plain)  # the adapter does something
    torch.testing.assert_close(again, tuned)  # and reloads to the same logits


def test_qlora_sft_trains_4bit_on_cpu(compose, stage_context):
    ctx = stage_context(compose(*TINY_SFT, "quant=qlora_nf4", "stage.sft.max_steps=2"))
    trainer = sft.build_trainer(ctx)
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    lora_b = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert all(not torch.equal(v, trainer.model.get_parameter(n)) for n, v in lora_b.items())
