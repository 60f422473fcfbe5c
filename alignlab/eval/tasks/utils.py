"""Helpers the bundled task YAMLs call through `!function`: mirror loading and record shaping.

Every task reads its original mirror files with `custom_dataset: !function utils.load_mirror`.
lm-eval calls it with the task's `dataset_kwargs` plus the task metadata, so the YAMLs hold
only paths relative to the data home, which comes from the `data_home` metadata key
(`TaskManager(metadata=...)`, or `--metadata` on the command line), else $ALIGNLAB_DATA_HOME,
else alignlab's download cache (files fetched on first use, `alignlab.data.store`).
The `*_docs` functions turn the original records into the fields lm-eval's own task prompts use.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import datasets

from alignlab.data.errors import DataError
from alignlab.data.store import data_home as resolve_data_home

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".txt": "text"}
_HELLASWAG_LINES = 6  # context, gold index, four endings


def _builder(path: str) -> str:
    suffixes = [s for s in Path(path).suffixes if s not in (".bz2", ".gz")]
    if not suffixes or suffixes[-1] not in _BUILDERS:
        raise DataError(f"mirror file {path}: no reader for this extension ({', '.join(_BUILDERS)})")
    return _BUILDERS[suffixes[-1]]


def _csv_text_columns(path: Path) -> datasets.Features:
    """Read every CSV cell as the text it is (no numeric or NA guessing by pandas)."""
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    names = [name or f"Unnamed: {i}" for i, name in enumerate(header)]  # pandas' names for blank headers
    return datasets.Features({name: datasets.Value("string") for name in names})


def load_mirror(data_files: dict, label_files: dict | None = None, data_home: str | None = None, **_):
    """DatasetDict of the mirror files `data_files` ({split: path under the data home}).

    `label_files` ({split: path}) adds a `label` column read one integer a line (PIQA's .lst).
    Other keyword arguments (task metadata) are ignored.
    """
    home = resolve_data_home(data_home)
    paths = {split: home.file(rel) for split, rel in data_files.items()}
    builder = _builder(str(next(iter(paths.values()))))
    kwargs = {}
    if builder == "csv":
        kwargs = {"features": _csv_text_columns(next(iter(paths.values()))), "keep_default_na": False}
    dataset = datasets.load_dataset(builder, data_files={k: str(v) for k, v in paths.items()}, **kwargs)
    for split, rel in (label_files or {}).items():
        label_path = home.file(rel)
        labels = [int(line) for line in label_path.read_text().split()]
        if len(labels) != len(dataset[split]):
            raise DataError(f"{label_path}: {len(labels)} labels for {len(dataset[split])} records")
        dataset[split] = dataset[split].add_column("label", labels)
    return dataset


def _choices(question: dict) -> dict:
    return {
        "text": [choice["text"] for choice in question["choices"]],
        "label": [choice["label"] for choice in question["choices"]],
    }


def arc_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """AI2 records {question: {stem, choices}} -> {question, choices: {text, label}, answerKey}."""
    return dataset.map(
        lambda doc: {"question": doc["question"]["stem"], "choices": _choices(doc["question"])},
        remove_columns=["question"],
    )


def openbookqa_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """ARC-shaped OpenBookQA records -> {question_stem, choices: {text, label}, answerKey}."""
    return dataset.map(
        lambda doc: {"question_stem": doc["question"]["stem"], "choices": _choices(doc["question"])},
        remove_columns=["question"],
    )


def boolq_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """The mirror's label, the string "true" / "false" -> 1 (yes) / 0 (no)."""
    return dataset.map(lambda doc: {"label": {"false": 0, "true": 1}[doc["label"]]})


def mmlu_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """CSV columns choice0..choice3 and a textual answer index -> {question, choices, answer}."""
    return dataset.map(
        lambda doc: {
            "choices": [doc[f"choice{i}"] for i in range(4)],
            "answer": int(doc["answer"]),
        },
        remove_columns=[f"choice{i}" for i in range(4)],
    )


def winogrande_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Drop the spreadsheet's trailing summary row (it has no question id)."""
    return dataset.filter(lambda doc: bool(doc["qID"]))


def winogrande_gold(doc: dict) -> int:
    """Partial scoring: the option that fills the blank correctly selects the context."""
    return int(doc["answer"]) - 1


def winogrande_contexts(doc: dict) -> list:
    """One context per option: the sentence up to the blank with the option filled in."""
    head = doc["sentence"][: doc["sentence"].index("_")]
    return [head + doc["option1"], head + doc["option2"]]


def winogrande_continuation(doc: dict) -> str:
    """The shared text after the blank, scored under each context."""
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


def _clean(text: str) -> str:
    """HellaSwag cleanup as lm-eval does it: WikiHow title markers and [..] artifacts out."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _capitalize_tail(context: str) -> str:
    """Capitalize a lowercase fragment after the last sentence (ActivityNet's `ctx_b`).

    The text mirror joins ctx_a and ctx_b; lm-eval capitalizes ctx_b, so a lowercase
    final fragment is taken to be ctx_b (WikiHow contexts end in full sentences).
    """
    head, sep, tail = context.rpartition(". ")
    if sep and tail[:1].islower():
        return head + sep + tail.capitalize()
    return context


def hellaswag_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Six text lines per item (`label: context`, gold index, four endings) -> {query, choices, label}."""
    lines = dataset["text"]
    if len(lines) % _HELLASWAG_LINES:
        raise DataError(f"HellaSwag text: {len(lines)} lines is not a multiple of {_HELLASWAG_LINES}")
    items = [lines[i : i + _HELLASWAG_LINES] for i in range(0, len(lines), _HELLASWAG_LINES)]
    return datasets.Dataset.from_list([
        {
            "query": _clean(_capitalize_tail(item[0])),
            "choices": [_clean(ending) for ending in item[2:]],
            "label": int(item[1]),
        }
        for item in items
    ])
