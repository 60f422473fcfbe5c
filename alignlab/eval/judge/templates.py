"""Judge prompt templates: FastChat's pairwise prompts from the mirror, or a user's own file."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from alignlab.data.store import data_home as resolve_data_home
from alignlab.errors import ConfigError

MIRROR_FILE = "prompts/judge_prompts.jsonl"
FIELDS = ("{question}", "{answer_a}", "{answer_b}")


@dataclass(frozen=True)
class JudgeTemplate:
    """A system prompt and a user prompt with {question}, {answer_a} and {answer_b}."""

    name: str
    system_prompt: str
    prompt_template: str

    def messages(self, question: str, answer_a: str, answer_b: str) -> List[Dict[str, str]]:
        user = self.prompt_template.format(question=question, answer_a=answer_a, answer_b=answer_b)
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]

    @property
    def text(self) -> str:
        """What identifies the template in the verdict cache."""
        return self.system_prompt + "\n\x00\n" + self.prompt_template


def _records(path: Path) -> List[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n}: judge template line is not JSON ({e.msg})") from None
    return records


def _template(record: dict, where: str) -> JudgeTemplate:
    for key in ("system_prompt", "prompt_template"):
        if not isinstance(record.get(key), str):
            raise ConfigError(f"{where}: judge template needs a string '{key}'")
    missing = [f for f in FIELDS if f not in record["prompt_template"]]
    if missing:
        raise ConfigError(f"{where}: prompt_template lacks {', '.join(missing)}")
    return JudgeTemplate(record.get("name", where), record["system_prompt"], record["prompt_template"])


def load_template(name: str, data_home: str | None = None) -> JudgeTemplate:
    """`name`: a path to a .json/.jsonl template file (its first record), or a template name
    in the mirror's FastChat judge prompts (default pair-v2)."""
    path = Path(name).expanduser()
    if path.suffix in (".json", ".jsonl"):
        if not path.is_file():
            raise ConfigError(f"judge.template: no file {path}")
        records = _records(path)
        if not records:
            raise ConfigError(f"judge.template: {path} holds no template")
        return _template(records[0], str(path))
    mirror = resolve_data_home(data_home).file(MIRROR_FILE)
    by_name = {r.get("name"): r for r in _records(mirror)}
    pairwise = sorted(n for n, r in by_name.items() if r.get("type") == "pairwise")
    if name not in by_name or by_name[name].get("type") != "pairwise":
        raise ConfigError(f"judge.template: no pairwise template '{name}' in {mirror}; have: {', '.join(pairwise)}")
    return _template(by_name[name], f"{mirror}:{name}")
