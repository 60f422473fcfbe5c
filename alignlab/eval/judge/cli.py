"""`alignlab judge-calibrate [overrides ...]`: calibrate the configured judge on its own.

Composes the same config tree as a run (`judge=openai judge.openai.base_url=...`,
`judge.calibration.pairs=40`, ...), measures the judge on the labelled reference sets
(alignlab.eval.judge.calibrate), prints one line per set and writes the result as JSON to
`<paths.cache_dir>/judge/calibration-latest.json`. Cached per judge: a second call is instant.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List

from alignlab.errors import AlignlabError, ConfigError


def _line(name: str, m: dict) -> str:
    num = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lo, hi = m["agreement_ci"]
    return (f"{name}: {m['n']} pairs, agreement {num(m['agreement'])} [{lo:.3f}, {hi:.3f}], one-order agreement "
            f"{num(m['agreement_one_order'])}, P(label better) {num(m['p_label_better'])}, consistency "
            f"{num(m['consistency'])}, position bias {num(m['position_bias'])}, tie mass {num(m['tie_mass'])}, "
            f"unparseable {m['unparseable']}: {'informative' if m['informative'] else 'not informative'}")


def calibrate_judge(overrides: List[str]) -> dict:
    """Compose the config with `overrides` and calibrate its judge."""
    from hydra import compose, initialize_config_dir

    from alignlab.cli import CONF_DIR
    from alignlab.data.store import data_home as resolve_data_home
    from alignlab.eval.judge.cache import JsonCache
    from alignlab.eval.judge.calibrate import calibrate
    from alignlab.eval.judge.config import JudgeConfig
    from alignlab.eval.judge.runner import make_backend
    from alignlab.eval.judge.templates import load_template
    from alignlab.preflight import setting_problems

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    problems = setting_problems(cfg.judge, JudgeConfig, "judge.")  # paths.run_dir needs a Hydra run
    if problems:
        raise ConfigError("\n  ".join(problems))
    data_home = str(resolve_data_home(cfg.paths.data_home).root) if cfg.paths.data_home else None
    cache_dir = Path(cfg.paths.cache_dir).expanduser() / "judge"
    result = calibrate(cfg, make_backend(cfg.judge, cfg.paths.model_cache), JsonCache(cache_dir),
                       load_template(cfg.judge.template, data_home), data_home)
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / "calibration-latest.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def main(argv: List[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    try:
        result = calibrate_judge(argv)
    except AlignlabError as err:
        print(f"\nalignlab: error: {err}", file=sys.stderr)
        return 1
    print(f"judge {result['judge']} (template {result['template']}):")
    for name, m in result["sets"].items():
        print("  " + _line(name, m))
    print("informative" if result["informative"] else "judge not informative: an agreement interval reaches 0.5")
    return 0
