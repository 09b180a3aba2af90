"""The demo's report: success of every method with 95% intervals, the data it used, plots and rollout GIFs.

Reads what the pipeline stages wrote in the run directory (``eval/<method>/metrics.json``,
the critic's diagnostics, TensorBoard logs) and writes ``report.md`` beside PNG plots.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

LABELS = {
    "base": "BC base", "base_rerank": "base + critic re-ranking", "awm": "AWM", "apo": "APO",
    "awm_rerank": "AWM + critic re-ranking", "dual": "dual system (S2 select, S1 refine)",
    "hg_dagger": "HG-DAgger (baseline)", "filtered_bc": "filtered BC (baseline)",
}


def _loss_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = run_dir / "tensorboard"
    if not tb.exists():
        return [], []
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    if "train/loss" not in acc.Tags().get("scalars", []):
        return [], []
    events = acc.Scalars("train/loss")
    return [e.step for e in events], [e.value for e in events]


def plot_success(results: dict[str, dict], path: Path) -> None:
    names = list(results)
    rates = [100 * results[m]["success_rate"] for m in names]
    lo = [r - 100 * results[m]["ci95"][0] for r, m in zip(rates, names, strict=True)]
    hi = [100 * results[m]["ci95"][1] - r for r, m in zip(rates, names, strict=True)]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(names)), rates, yerr=[lo, hi], capsize=4,
           color=["#888888" if m == "base" else "#3a7bd5" for m in names])
    ax.set_xticks(range(len(names)), [LABELS.get(m, m).split(" (")[0] for m in names], rotation=20, ha="right")
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 100)
    ax.set_title("success on unseen seeds, 95% Wilson intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_learning_curves(out: Path, path: Path) -> bool:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    drawn = False
    for name in ("base", "awm", "apo", "hg_dagger", "filtered_bc", "system1", "critic"):
        steps, values = _loss_curve(out / name)
        if steps:
            ax.plot(steps, values, label=name)
            drawn = True
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def write_report(out: str | Path, cfg: dict, stages: dict[str, dict]) -> Path:
    out = Path(out)
    results = {s.removeprefix("eval/"): v for s, v in stages.items() if s.startswith("eval/")}
    lines = [f"# Post-training report: `{cfg['task']}`", ""]
    lines += [f"Run directory `{out}`; experiment `{cfg.get('name', '')}`. Every method is evaluated on the "
              f"same {cfg['eval']['episodes']} unseen seeds (from {cfg['eval']['seed']}).", ""]

    lines += ["## Success", "", "| method | success | 95% CI | episodes | mean steps |", "|---|---|---|---|---|"]
    base = results.get("base", {}).get("success_rate")
    for m, r in results.items():
        delta = "" if base is None or m == "base" else f" ({100 * (r['success_rate'] - base):+.0f})"
        lines.append(f"| {LABELS.get(m, m)} | {100 * r['success_rate']:.0f}%{delta} | "
                     f"[{100 * r['ci95'][0]:.0f}, {100 * r['ci95'][1]:.0f}] | {r['episodes']} | "
                     f"{r.get('mean_length', float('nan')):.1f} |")
    if results:
        plot_success(results, out / "success_by_method.png")
        lines += ["", "![success by method](success_by_method.png)", ""]

    demos, roll = stages.get("demos", {}), stages.get("rollouts", {})
    lines += ["## Data", "", "| dataset | episodes | success | steps | intervention steps | episodes with a takeover |",
              "|---|---|---|---|---|---|"]
    for name, d in (("expert demos (imperfect)", demos), ("base rollouts, scripted intervener", roll)):
        if d:
            lines.append(f"| {name} | {d['episodes']} | {100 * d['success_rate']:.0f}% | {d['steps']} | "
                         f"{d['intervention_steps']} | {d['episodes_with_intervention']} |")

    crit = stages.get("critic", {})
    if crit:
        def num(key):
            v = crit.get(key)
            return "n/a" if v is None else f"{v:.2f}"

        lines += ["", "## Critic", "",
                  f"{crit.get('critic', 'critic')} on {crit.get('held_out_episodes', '?')} held-out episodes: "
                  f"Spearman(Q, return) {num('spearman_q')}, AUROC(Q, success) {num('auroc_q')}, "
                  f"Spearman(V, return) {num('spearman_v')}, AUROC(V, success) {num('auroc_v')}.", ""]
        if (out / "critic" / "q_vs_return.png").exists():
            lines += ["![critic calibration](critic/q_vs_return.png)", ""]

    if plot_learning_curves(out, out / "learning_curves.png"):
        lines += ["## Learning curves", "", "![learning curves](learning_curves.png)", ""]

    gifs = []
    for m in ("base", *[k for k in results if k != "base"]):
        vids = json.loads((out / "eval" / m / "metrics.json").read_text()).get("videos", []) \
            if (out / "eval" / m / "metrics.json").exists() else []
        gifs += [f"| {LABELS.get(m, m)} | " + " ".join(f"![{v}](eval/{m}/{v})" for v in vids) + " |"] if vids else []
    if gifs:
        lines += ["## Rollouts (same seeds for every method)", "", "| method | episodes |", "|---|---|", *gifs, ""]

    lines += ["## Time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s} | {v.get('seconds', 0):.0f} |" for s, v in stages.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
