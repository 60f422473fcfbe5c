"""SFT stage on the tiny model: what trains, what stays frozen, what reloads."""
from __future__ import annotations

import json

import torch

from alignlab.models import load_adapter, load_base, load_tokenizer
from alignlab.stages import sft
from alignlab.stages.context import Artifact, load_inference
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


def test_sft_run_logs_metrics_and_saves_adapter(compose, stage_context):
    ctx = stage_context(compose(*TINY_SFT))
    metrics = sft.run(ctx)
    assert metrics["train_steps"] == 4 and "eval_loss" in metrics and metrics["train_loss"] > 0
    logged = [json.loads(line) for line in (ctx.work_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in logged) and any("eval_loss" in r for r in logged)
    assert (ctx.work_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (ctx.work_dir / "adapter" / "tokenizer.json").is_file()


def test_saved_adapter_reloads_to_the_trained_models_logits(compose, stage_context):
    cfg = compose(*TINY_SFT)
    ctx = stage_context(cfg)
    trainer = sft.build_trainer(ctx)
    trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False).eval()
    ids = load_tokenizer(cfg.model, cfg.paths.model_cache)("Tell me a joke.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
    trainer.save_model(str(ctx.work_dir / "adapter"))

    base = load_base(cfg.model, cfg.quant, cfg.paths.model_cache)
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        reloaded = load_adapter(base, ctx.work_dir / "adapter", trainable=False)(input_ids=ids).logits
    assert not torch.allclose(expected, plain)  # the adapter does something
    torch.testing.assert_close(reloaded, expected, rtol=0, atol=1e-6)


def test_qlora_sft_trains_4bit_on_cpu(compose, stage_context):
    ctx = stage_context(compose(*TINY_SFT, "quant=qlora_nf4", "stage.sft.max_steps=2"))
    trainer = sft.build_trainer(ctx)
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    lora_b = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert all(not torch.equal(v, trainer.model.get_parameter(n)) for n, v in lora_b.items())


def test_merge_export_writes_a_standalone_model_with_the_adapter_folded_in(compose, stage_context):
    from transformers import AutoModelForCausalLM

    cfg = compose(*TINY_SFT, "stage.sft.max_steps=2", "stage.sft.merge_export=true")
    ctx = stage_context(cfg)
    sft.run(ctx)
    merged = AutoModelForCausalLM.from_pretrained(ctx.work_dir / "merged")
    adapted = load_adapter(load_base(cfg.model, cfg.quant, cfg.paths.model_cache), ctx.work_dir / "adapter", trainable=False)
    ids = torch.tensor([[1, 504, 3101, 2]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_nodes_are_evaluated_merged_only_in_fp32(compose, stage_context):
    """Merging LoRA into bf16 weights rounds W + BA: evaluations would measure the rounding too."""
    from peft import PeftModel

    cfg = compose(*TINY_SFT)
    ctx = stage_context(cfg)
    sft.run(ctx)
    node = Artifact(node="sft", stage="sft", key="k", path=ctx.work_dir)
    fp32, _ = load_inference(cfg, node)
    bf16, _ = load_inference(compose(*TINY_SFT, "model.dtype=bfloat16"), node)
    assert not isinstance(fp32, PeftModel)
    assert isinstance(bf16, PeftModel) and next(bf16.parameters()).dtype == torch.bfloat16


def _trained_text(trainer, index: int) -> str:
    labels = trainer.data_collator([trainer.train_dataset[index]])["labels"][0]
    return trainer.processing_class.decode(labels[labels != -100])


def test_loss_scope_completion_trains_the_final_reply_and_all_trains_every_token(compose, stage_context):
    multi_turn = (*TINY_SFT, "data@data.sft=oasst_sft", "data.sft.max_chars=3000", "stage.sft.max_length=512")
    cfg = compose(*multi_turn, "stage.sft.loss_scope=completion")
    row = next(i for i, r in enumerate(stage_context(cfg).data.train)
               if sum(m["role"] == "assistant" for m in r["messages"]) > 1)  # a multi-turn conversation
    messages = stage_context(cfg).data.train[row]["messages"]
    completion = sft.build_trainer(stage_context(cfg))
    trained = _trained_text(completion, row)
    assert trained.startswith(messages[-1]["content"]) and messages[1]["content"] not in trained

    every = sft.build_trainer(stage_context(compose(*multi_turn, "stage.sft.loss_scope=all")))
    ids = every.train_dataset[row]["input_ids"]
    labels = every.data_collator([every.train_dataset[row]])["labels"][0]
    assert labels.tolist() == ids  # no token masked
    assistant = sft.build_trainer(stage_context(compose(*multi_turn)))
    assert messages[1]["content"] in _trained_text(assistant, row)  # every assistant turn


def test_disable_dropout_turns_off_the_adapters_dropout_and_optimizer_settings_reach_the_trainer(compose, stage_context):
    kept = sft.build_trainer(stage_context(compose(*TINY_SFT, "peft.dropout=0.3")))
    assert {m.p for m in kept.model.modules() if isinstance(m, torch.nn.Dropout)} >= {0.3}
    off = sft.build_trainer(stage_context(compose(*TINY_SFT, "peft.dropout=0.3", "stage.sft.disable_dropout=true",
                                                  "stage.sft.adam_beta2=0.95", "stage.sft.adam_epsilon=1e-5")))
    assert {m.p for m in off.model.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    off.model.train()
    ids = torch.tensor([off.train_dataset[0]["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(off.model(input_ids=ids).logits, off.model(input_ids=ids).logits, rtol=0, atol=0)
    optimizer = off.create_optimizer()
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["eps"] == 1e-5
