"""Run lm-eval on an in-memory model and keep the scores, and per-item scores, that forgetting checks compare."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml

from alignlab.errors import ConfigError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MMLU_GROUP = "alignlab_mmlu"


def mmlu_subjects() -> list[str]:
    """The MMLU subjects bundled as `alignlab_mmlu_<subject>` tasks."""
    prefix = f"{MMLU_GROUP}_"
    return sorted(p.stem[len(prefix):] for p in (TASKS_DIR / "mmlu").glob(f"{prefix}*.yaml"))


def _write_mmlu_subset(subjects, directory: Path) -> None:
    """A group `alignlab_mmlu` over `subjects` only; it overrides the bundled all-subject group."""
    unknown = sorted(set(subjects) - set(mmlu_subjects()))
    if unknown:
        raise ConfigError(f"unknown MMLU subject(s) {', '.join(unknown)}; known: {', '.join(mmlu_subjects())}")
    group = {
        "group": MMLU_GROUP,
        "task": [f"{MMLU_GROUP}_{subject}" for subject in subjects],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": 1.0},
    }
    (directory / f"{MMLU_GROUP}.yaml").write_text(yaml.safe_dump(group))


def compact_scores(results: dict) -> dict:
    """{task: {metric: value, metric_stderr: value}} from lm-eval results.

    lm-eval keys are `metric,filter`; the filter is dropped when it is `none`
    (`acc`, `acc_stderr`) and kept otherwise (`exact_match,strict-match`).
    Stderrs lm-eval did not compute ("N/A") become None.
    """
    scores = {}
    for task, entries in results["results"].items():
        metrics = {}
        for key, value in entries.items():
            if "," not in key:
                continue  # alias, sample counts
            metric, filter_name = key.split(",", 1)
            name = metric if filter_name == "none" else key
            metrics[name] = float(value) if isinstance(value, (int, float)) else None
        scores[task] = metrics
    return scores


def item_scores(samples: dict) -> dict:
    """lm-eval's logged samples cut to what paired deltas need: {task: [{doc_id, filter, metric: value}]}."""
    return {task: [{"doc_id": s["doc_id"], "filter": s["filter"], **{m: s[m] for m in s["metrics"]}}
                   for s in logged]
            for task, logged in samples.items()}


def evaluate_model(model, tokenizer, eval_cfg, data_home, out_path) -> dict:
    """Evaluate `model` (a transformers or peft model, left in its train/eval mode) on `eval_cfg.tasks`.

    `eval_cfg` is a ForgettingConfig (or a DictConfig with its fields); `data_home` is the
    mirror the bundled tasks read (None: $ALIGNLAB_DATA_HOME, else the download cache). Writes
    lm-eval's results JSON to `out_path`, its `samples` cut to each item's scores (`item_scores`),
    and returns it.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    was_training = model.training
    with tempfile.TemporaryDirectory(prefix="alignlab-tasks-") as extra:
        include = [str(TASKS_DIR), *map(str, eval_cfg.include_paths)]
        if eval_cfg.mmlu_subjects and MMLU_GROUP in eval_cfg.tasks:
            _write_mmlu_subset(list(eval_cfg.mmlu_subjects), Path(extra))
            include.append(extra)
        manager = TaskManager(include_path=include, metadata={"data_home": data_home})
        seed = eval_cfg.seed
        try:
            results = simple_evaluate(
                model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=eval_cfg.batch_size),
                tasks=list(eval_cfg.tasks),
                num_fewshot=eval_cfg.num_fewshot,
                limit=eval_cfg.limit,
                bootstrap_iters=eval_cfg.bootstrap_iters,
                log_samples=True,
                task_manager=manager,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
        finally:
            model.train(was_training)
    results["samples"] = item_scores(results["samples"])
    text = json.dumps(results, indent=1, default=handle_non_serializable, ensure_ascii=False)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    return json.loads(text)
