"""The run report: report.md and a self-contained report.html (plots inlined) next to summary.json.

Built from summary.json's sections and each node's metrics.jsonl: training curves, reward-model
accuracy and margins, PPO reward and KL, the forgetting table with its gate, the reward-KL frontier,
the judge's win rates with intervals, and sample responses side by side.
"""
from __future__ import annotations

import base64
import html
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from alignlab.eval.gate import stderr_key  # noqa: E402
from alignlab.record import Delta, ForgettingRecord, JudgeRecord, PaperRecord, RewardKLRecord, RunRecord  # noqa: E402
from alignlab.stages import REGISTRY, headline  # noqa: E402

Block = Tuple[str, Any]  # ("p", text) | ("table", (header, rows)) | ("img", path) | ("pre", text)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _records(artifact: str) -> List[dict]:
    path = Path(artifact) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plot_curves(name: str, stage: str, records: List[dict], out: Path) -> Path | None:
    curves = REGISTRY[stage].curves if stage in REGISTRY else ()
    keys = [k for k in curves if any(k in r for r in records)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{name} ({stage})", fontsize=10)
    fig.tight_layout()
    path = out / f"curves_{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _nodes_section(record: RunRecord, plots: Path) -> List[Block]:
    metric_names = headline(node.stage for node in record.nodes.values())
    header = ["node", "stage", "status", "seconds", *metric_names]
    rows, blocks = [], []
    for name, node in record.nodes.items():
        rows.append([name, node.stage, node.status, node.seconds, *[node.metrics.get(k) for k in metric_names]])
    keep = [i for i in range(len(header)) if i < 4 or any(r[i] is not None for r in rows)]
    blocks.append(("table", ([header[i] for i in keep], [[r[i] for i in keep] for r in rows])))
    for name, node in record.nodes.items():
        artifact = node.artifact
        if not artifact:
            continue
        curve = _plot_curves(name, node.stage, _records(artifact), plots)
        if curve:
            blocks.append(("img", curve))
        margins = Path(artifact) / "reward_margins.png"
        if margins.is_file():
            blocks.append(("p", f"{name}: held-out reward margins (chosen - rejected)"))
            blocks.append(("img", Path(shutil.copy(margins, plots / f"margins_{name}.png"))))
    return blocks


def _delta(d) -> str:
    """`-14.0 ± 6.1` (points ± the interval's half width), or the delta alone below two items."""
    if d is None:
        return ""
    return f"{d.delta:+.1f}" + ("" if d.hi is None else f" ± {d.hi - d.delta:.1f}")


def _forgetting_section(section: ForgettingRecord | None, plots: Path) -> List[Block]:
    if section is None or not section.base:
        return [("p", "Forgetting checks were off.")]
    primary, nodes = section.metrics, section.nodes
    header = ["task", "metric", "base"] + [f"{n}: score (Δbase / Δparent), n" for n in nodes]
    rows = []
    for task, p in primary.items():
        scores = section.base[task]
        stderr = scores.get(stderr_key(p.metric))
        label = task if p.gated else f"· {task} (shown, not gated)"
        row = [label, p.metric + ("" if p.higher_is_better else " (lower is better)"),
               f"{scores[p.metric]:.3f}" + (f" ± {stderr:.3f}" if stderr else "")]
        for name in nodes:
            d: Delta | None = section.delta(name, task)
            if d is None:
                row.append("")
                continue
            parent = "" if d.vs_parent is None else f" / {_delta(d.vs_parent)}"
            row.append(f"{d.node:.3f} ({_delta(d.vs_base)}{parent}), n {d.vs_base.n}")
        rows.append(row)
    violations = section.violations
    gate = (f"Gate ({section.gate}, max drop {section.max_drop} points, and the interval must exclude 0): "
            + ("passed." if not violations else f"{len(violations)} violation(s): " + "; ".join(
                f"{v.node} {v.task} {v.metric} {v.before:.3f} -> {v.after:.3f} "
                f"({v.delta:+.1f} [{v.lo:+.1f}, {v.hi:+.1f}], n {v.n})"
                for v in violations)))
    blocks: List[Block] = [("p", f"Tasks {', '.join(section.tasks)}; limit {section.limit} items. Deltas in "
                                 f"points from paired per-item differences, ± the {section.confidence:.0%} "
                                 "interval's half width; n items."),
                           ("table", (header, rows)), ("p", gate)]
    tasks = [t for t, p in primary.items() if p.gated]
    models = {"base": section.base, **{n: v.scores for n, v in nodes.items()}}
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(tasks)), 2.8))
    width = 0.8 / len(models)
    for k, (name, scores) in enumerate(models.items()):
        metrics = [primary[t].metric for t in tasks]
        values = [scores[t][m] for t, m in zip(tasks, metrics)]
        errors = [scores[t].get(stderr_key(m)) or 0 for t, m in zip(tasks, metrics)]
        ax.bar([i + k * width for i in range(len(tasks))], values, width, yerr=errors, label=name, capsize=2)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], [t.replace("alignlab_", "") for t in tasks], fontsize=8)
    ax.set_ylabel("score")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = plots / "forgetting.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return blocks + [("img", path)]


STAGE_COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
FRONTIER_PLOT = "reward_kl_frontier.png"


def stage_colour(stage: str) -> str:
    """One colour per stage kind (the base grey), the same in every report and grid figure."""
    if stage not in REGISTRY:
        return "#333333"
    return STAGE_COLOURS[list(REGISTRY).index(stage) % len(STAGE_COLOURS)]


def plot_frontier(points: List[Tuple[str, str, Any]], path: Path, title: str, confidence: float,
                  reward_name: str) -> None:
    """Gold reward against KL from the reference, one point per (label, stage kind, RewardKLNode)
    with its bootstrap intervals as error bars, coloured by stage kind."""
    fig, ax = plt.subplots(figsize=(6, 4))
    seen = set()
    for label, stage, p in points:
        xerr = [[max(0.0, p.kl - p.kl_ci[0])], [max(0.0, p.kl_ci[1] - p.kl)]]
        yerr = [[max(0.0, p.reward - p.reward_ci[0])], [max(0.0, p.reward_ci[1] - p.reward)]]
        ax.errorbar([p.kl], [p.reward], xerr=xerr, yerr=yerr, fmt="o", capsize=3, color=stage_colour(stage),
                    label=None if stage in seen else stage)
        seen.add(stage)
        ax.annotate(label, (p.kl, p.reward), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"KL(model || reference), nats ({confidence:.0%} bootstrap interval over prompts)", fontsize=8)
    ax.set_ylabel(f"reward of {reward_name}", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _reward_kl_section(section: RewardKLRecord | None, plots: Path) -> List[Block]:
    if section is None or not section.nodes:
        return [("p", "The reward-KL evaluation was off." if section is None else "No model was evaluated.")]
    header = ["model", "stage", "settings", "reference", f"reward of {section.reward} (CI)", "KL (CI)", "prompts",
              "samples", "EOS fraction", "mean tokens"]
    rows = [[name, p.stage, p.label, p.reference, _interval(p.reward, p.reward_ci), _interval(p.kl, p.kl_ci),
             p.prompts, p.n, _fmt(p.eos_fraction), _fmt(p.response_length)] for name, p in section.nodes.items()]
    path = plots / FRONTIER_PLOT
    plot_frontier([(name if not p.label else f"{name} ({p.label})", p.stage, p) for name, p in section.nodes.items()],
                  path, "reward-KL frontier", section.confidence, section.reward)
    return [("p", f"{section.prompts} held-out prompts of data.{section.data} x {section.samples_per_prompt} samples "
                  f"(temperature {section.temperature:g}, at most {section.max_new_tokens} new tokens, seed "
                  f"{section.seed}), the same for every model, scored by the reward node {section.reward}. KL: the "
                  f"sum of per-token log-ratios to the {section.reference} model on the model's own samples, up to the "
                  f"first EOS. Means over prompts with {section.confidence:.0%} bootstrap intervals over prompts."),
            ("table", (header, rows)), ("img", path)]


def _interval(value, ci) -> str:
    return "n/a" if value is None else f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _judge_section(section: JudgeRecord | None, plots: Path, samples: int) -> List[Block]:
    if section is None or not section.comparisons:
        return [("p", "Judging was off." if section is None else "No comparisons were judged.")]
    header = ["a vs b", "P(a better) (CI)", "win", "tie", "loss", "unparseable", "win rate (CI)", "loss rate (CI)",
              "tie mass", "position bias", "consistency", "judge"]
    comparisons = list(section.comparisons.values())
    rows = [[f"{c.a} vs {c.b}", _interval(c.p_better, c.p_better_ci), c.win, c.tie, c.loss, c.unparseable,
             _interval(c.win_rate, c.win_rate_ci), _interval(c.loss_rate, c.loss_rate_ci), _fmt(c.tie_mass),
             _fmt(c.position_bias), _fmt(c.consistency), _informative(c.judge_informative)] for c in comparisons]
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.45 * len(comparisons)))
    labels = [f"{c.a} vs {c.b}" for c in comparisons]
    for i, c in enumerate(comparisons):
        if c.p_better is None:
            continue
        lo, hi = c.p_better_ci
        err = [[max(0.0, c.p_better - lo)], [max(0.0, hi - c.p_better)]]
        ax.errorbar([c.p_better], [i], xerr=err, fmt="o", capsize=3)
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"P(a better) ({int(comparisons[0].confidence * 100)}% bootstrap interval over prompts)")
    fig.tight_layout()
    path = plots / "judge_p_better.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    models = list(dict.fromkeys([c.a for c in comparisons] + [c.b for c in comparisons]))
    cells = {(c.a, c.b): _interval(c.p_better, c.p_better_ci) for c in comparisons}
    matrix = [[a, *[cells.get((a, b), "") for b in models]] for a in models if any((a, b) in cells for b in models)]
    blocks: List[Block] = [
        ("p", f"Judge {section.judge} with template {section.template} on {section.prompts.count} "
              f"prompts, each pair judged in both orders: per prompt P(a better) = ½[P(A | a first) + "
              f"P(B | a second)] renormalised over a and b (the judge's probabilities where it gives them, "
              f"else its parsed verdict); a prompt is a tie within {section.tie_margin or 0:g} of 0.5. "
              f"Tie mass: the judge's mean P(tie); position bias: mean P(A) − 0.5; consistency: share of "
              f"prompts where both orders lean to the same model. "
              f"Unparseable judge replies: {section.unparseable_replies or 0}."),
        ("table", (header, rows)),
        *_calibration(section.calibration),
        ("p", "P(row model better) against the column model, with its bootstrap interval."),
        ("table", (["a \\ b", *models], matrix)), ("img", path)]
    return blocks + _samples(section, samples)


def _informative(flag) -> str:
    return "not calibrated" if flag is None else "informative" if flag else "judge not informative"


def _calibration(calibration) -> List[Block]:
    """The judge's calibration on labelled pairs (alignlab.eval.judge.calibrate)."""
    if not calibration:
        return [("p", "The judge was not calibrated (judge.calibrate=false).")]
    header = ["reference set", "pairs", "agreement (CI)", "one-order agreement", "P(label better) (CI)",
              "consistency", "position bias", "tie mass", "unparseable", "informative"]
    rows = [[name, m.n, _interval(m.agreement, m.agreement_ci), _fmt(m.agreement_one_order),
             _interval(m.p_label_better, m.p_label_better_ci), _fmt(m.consistency),
             _fmt(m.position_bias), _fmt(m.tie_mass), m.unparseable, "yes" if m.informative else "no"]
            for name, m in calibration.sets.items()]
    verdict = ("The judge is informative: on every set its agreement interval lies above 0.5."
               if calibration.informative else
               "Judge not informative: on at least one set its agreement interval reaches 0.5 or below, so the "
               "verdicts above are no evidence.")
    return [("p", f"Judge calibration on labelled pairs, each judged in both orders; agreement: share of pairs "
                  f"where P(label better) > 0.5 (Wilson interval); one-order agreement: the same for single "
                  f"judgements, before swap debiasing. {verdict}"),
            ("table", (header, rows))]


def _samples(section: JudgeRecord, count: int) -> List[Block]:
    responses = {}
    for model, path in section.responses.items():
        if Path(path).is_file():
            responses[model] = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    if not responses:
        return []
    models = list(responses)
    rows = []
    for i in range(min(count, len(next(iter(responses.values()))))):
        rows.append([responses[models[0]][i]["question"], *[responses[m][i]["response"] for m in models]])
    return [("p", "Sample responses"), ("table", (["prompt", *models], rows))]


def _paper_section(section: PaperRecord) -> List[Block]:
    blocks: List[Block] = [("p", f"Reproduces {section.citation}.")]
    if section.departures:
        blocks.append(("p", "This run departs from the paper's sourced values without a declared reason: "
                       + "; ".join(section.departures)))
    rows = [[key, d.kind, d.reason] for key, d in section.deviations.items()]
    return blocks + [("p", "Declared deviations from the paper"), ("table", (["key", "kind", "reason"], rows))]


def _sections(record: RunRecord, plots: Path, samples: int) -> List[Tuple[str, List[Block]]]:
    paper = [("Paper", _paper_section(record.paper))] if record.paper is not None else []
    return paper + [
        ("Nodes", _nodes_section(record, plots)),
        ("Forgetting checks", _forgetting_section(record.forgetting, plots)),
        ("Reward-KL frontier", _reward_kl_section(record.reward_kl, plots)),
        ("Judge", _judge_section(record.judge, plots, samples)),
    ]


def _markdown(title: str, record: RunRecord, sections, run_dir: Path) -> str:
    out = [f"# {title}", "", f"Status: **{record.status}**" + (f" — {record.error}" if record.error else ""), ""]
    for name, blocks in sections:
        out += [f"## {name}", ""]
        for kind, value in blocks:
            if kind == "p":
                out += [value, ""]
            elif kind == "img":
                out += [f"![{value.stem}]({value.relative_to(run_dir)})", ""]
            elif kind == "table":
                header, rows = value
                cell = lambda v: _fmt(v).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
                out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows] + [""]
    return "\n".join(out)


def _html(title: str, record: RunRecord, sections) -> str:
    esc = lambda v: html.escape(_fmt(v)).replace("\n", "<br>")  # noqa: E731
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
           "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:13px}"
           "td,th{border:1px solid #ccc;padding:4px;vertical-align:top}</style></head><body>",
           f"<h1>{esc(title)}</h1><p>Status: <b>{esc(record.status)}</b> {esc(record.error or '')}</p>"]
    for name, blocks in sections:
        out.append(f"<h2>{esc(name)}</h2>")
        for kind, value in blocks:
            if kind == "p":
                out.append(f"<p>{esc(value)}</p>")
            elif kind == "img":
                data = base64.b64encode(value.read_bytes()).decode()
                out.append(f"<img alt='{esc(value.stem)}' src='data:image/png;base64,{data}'>")
            elif kind == "table":
                header, rows = value
                out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows]
                out.append("</table>")
    return "\n".join(out + ["</body></html>"])


def write_report(record: RunRecord, run_dir: Path, samples: int = 3) -> Dict[str, Path]:
    """Write report.md, report.html and plots/*.png into `run_dir`; returns their paths by name."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    sections = _sections(record, plots, samples)
    title = f"alignlab report: {record.name}"
    (run_dir / "report.md").write_text(_markdown(title, record, sections, run_dir), encoding="utf-8")
    (run_dir / "report.html").write_text(_html(title, record, sections), encoding="utf-8")
    return {"report.md": run_dir / "report.md", "report.html": run_dir / "report.html",
            **{p.name: p for p in sorted(plots.glob("*.png"))}}
