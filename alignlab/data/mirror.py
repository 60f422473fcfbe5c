"""Short names of the data files datasets are read from (each a `manifest.tsv` entry)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .store import DataHome


@dataclass(frozen=True)
class MirrorEntry:
    path: str  # relative to the data home; a path in alignlab/data/manifest.tsv
    format: str  # a name in `alignlab.data.formats.FORMATS`
    note: str


MIRROR: dict[str, MirrorEntry] = {
    "alpaca_eval_gpt4": MirrorEntry(
        "sft/alpaca_eval/gpt4_1106_preview__model_outputs.json", "alpaca_eval",
        "805 AlpacaEval instructions answered by gpt4_1106_preview; `dataset` field: "
        "helpful_base, koala, oasst, selfinstruct, vicuna (80)"),
    "alpaca_eval_davinci003": MirrorEntry(
        "sft/alpaca_eval/text_davinci_003__model_outputs.json", "alpaca_eval",
        "the same 805 instructions answered by text_davinci_003 (2 empty outputs)"),
    "alpaca_eval_gpt4_annotations": MirrorEntry(
        "preference/alpaca_eval/gpt4__alpaca_eval_gpt4__annotations.json", "alpaca_eval_annotations",
        "805 GPT-4 judgements davinci003 (output_1) vs gpt4 (output_2): 761 x 2, 32 x 1, 12 ties"),
    "oasst_en_100": MirrorEntry(
        "sft/oasst/en_100_tree.jsonl", "oasst", "100 OASST message trees (1,167 messages)"),
    "self_instruct_user": MirrorEntry(
        "sft/self_instruct/user_oriented_instructions.jsonl", "self_instruct",
        "252 user-oriented instructions, one instance each"),
    "gsm8k_train": MirrorEntry("sft/gsm8k/train.jsonl", "gsm8k", "7,473 grade-school math problems"),
    "gsm8k_test": MirrorEntry(
        "benchmarks/gsm8k/test.jsonl", "gsm8k", "1,319 GSM8K test problems (benchmark: never train on it)"),
    "code_alpaca": MirrorEntry(
        "sft/codealpaca/code_alpaca_2k.json", "alpaca", "2,017 Code Alpaca rows (2 empty outputs)"),
    "hh_rlhf_harmless": MirrorEntry(
        "preference/hh_rlhf/harmless-base-test.jsonl.gz", "hh_rlhf",
        "2,312 HH-RLHF harmless-base test transcripts (4 with an empty chosen reply)"),
    "mtbench": MirrorEntry("prompts/mtbench_question.jsonl", "mtbench", "80 MT-Bench questions"),
    "vicuna": MirrorEntry("prompts/vicuna_question.jsonl", "vicuna", "80 Vicuna questions"),
}


def mirror_path(name: str, home: DataHome) -> Path:
    """Local path of mirror dataset `name` in `home` (fetched first where `home` is the cache)."""
    return home.file(MIRROR[name].path)


def unknown_source(source: str) -> DataError:
    """Error for a source that is neither a mirror name, a file nor a hub id."""
    return DataError(f"unknown data source '{source}': not a mirror name, an existing file or a "
                     f"'hub:owner/name' id; known mirror names: {', '.join(sorted(MIRROR))}")
