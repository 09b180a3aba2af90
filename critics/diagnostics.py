"""Is the critic worth trusting? Measured on held-out episodes and written next to every critic.

* ``q_vs_return.png``: the (pessimistic) Q of each recorded chunk against the discounted
  return that followed it, coloured by source;
* ``diagnostics.json``: Spearman correlation of Q with the return, AUROC of Q at telling
  chunks of successful episodes from chunks of failed ones, the same for V(s) when a policy
  is at hand, and a breakdown by source: ``demo`` episodes, ``policy`` steps (the policy
  in control), ``intervention`` steps (a human or the scripted intervener in control).
  ``ci95`` holds 95% intervals of the four scores from resampling whole episodes: with a
  few dozen held-out episodes they are wide, and which episodes were held out moves the
  scores by as much (benchmarks/results/critics_pick_place.json, "split_seeds").

A verifier no better than chance makes best-of-N no better than random (ALGORITHMS.md),
so these numbers come before any re-ranking.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr
from torch.utils.data import DataLoader

from vla.types import ACTION, SOURCE_DEMO, SOURCE_INTERVENTION, ChunkPolicy, to_device

DIAGNOSTICS = "diagnostics.json"
PLOT = "q_vs_return.png"
GROUPS = ("demo", "policy", "intervention")


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Rank correlation; None where it is undefined (fewer than 3 points or a constant input)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U).

    None where a class is missing.
    """
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def source_group(source: str, human: bool) -> str:
    """demo | policy | intervention: who produced this chunk."""
    if source == SOURCE_DEMO:
        return "demo"
    if human or source == SOURCE_INTERVENTION:
        return "intervention"
    return "policy"


@torch.no_grad()
def predict(critic, dataset, policy: ChunkPolicy | None = None, batch_size: int = 256,
            value_samples: int = 8, device="cpu") -> dict[str, np.ndarray]:
    """Per held-out frame: Q of the recorded chunk, V(s) (with a policy, or IQL's V), return, labels."""
    critic.eval()
    out: dict[str, list] = {k: [] for k in ("q", "v", "ret", "success", "group", "episode")}
    has_value = policy is not None or critic.type_name in ("iql", "vqh")
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        batch = to_device(batch, device)
        out["q"].append(critic.aggregate(critic.q(batch, batch[ACTION][:, None]))[:, 0].float().cpu())
        if has_value:
            out["v"].append(critic.value(batch, policy, value_samples).float().cpu())
        out["ret"].append(batch["mc_return"].float().cpu())
        out["success"].append(batch["episode_success"].cpu())
        out["episode"].append(batch["global_episode"].cpu())
        human = batch["label.human"].cpu().tolist()
        out["group"] += [source_group(s, h) for s, h in zip(batch["source"], human, strict=True)]
    res = {k: (np.asarray(v) if k == "group" else torch.cat(v).numpy()) for k, v in out.items() if v}
    return res


def metrics(pred: dict[str, np.ndarray]) -> dict:
    def block(mask: np.ndarray) -> dict:
        ret, success = pred["ret"][mask], pred["success"][mask]
        d = {
            "chunks": int(mask.sum()),
            "episodes": int(len(np.unique(pred["episode"][mask]))),
            "success_rate": float(success.mean()) if mask.any() else None,
            "mean_return": float(ret.mean()) if mask.any() else None,
        }
        for name in ("q", "v"):
            if name in pred and mask.any():
                d[f"mean_{name}"] = float(pred[name][mask].mean())
                d[f"spearman_{name}"] = spearman(pred[name][mask], ret)
                d[f"auroc_{name}"] = auroc(pred[name][mask], success)
        return d

    everything = np.ones(len(pred["q"]), dtype=bool)
    result = block(everything)
    result["by_source"] = {g: block(pred["group"] == g) for g in GROUPS if (pred["group"] == g).any()}
    return result


def bootstrap_intervals(pred: dict[str, np.ndarray], resamples: int = 200, seed: int = 0) -> dict:
    """95% percentile intervals of Spearman and AUROC (Q, and V when present), resampling whole
    episodes with replacement (frames of one episode are not independent). {} when ``resamples`` is 0."""
    if resamples <= 0:
        return {}
    episodes = [np.flatnonzero(pred["episode"] == e) for e in np.unique(pred["episode"])]
    rng = np.random.default_rng(seed)
    names = [n for n in ("q", "v") if n in pred]
    draws: dict[str, list] = {f"{m}_{n}": [] for n in names for m in ("spearman", "auroc")}
    for _ in range(resamples):
        idx = np.concatenate([episodes[i] for i in rng.integers(len(episodes), size=len(episodes))])
        for n in names:
            draws[f"spearman_{n}"].append(spearman(pred[n][idx], pred["ret"][idx]))
            draws[f"auroc_{n}"].append(auroc(pred[n][idx], pred["success"][idx]))
    out = {}
    for key, values in draws.items():
        values = [v for v in values if v is not None]  # a resample can miss a class
        out[key] = [round(float(q), 3) for q in np.percentile(values, [2.5, 97.5])] if values else None
    return out


def plot(pred: dict[str, np.ndarray], path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=120)
    for group, color in zip(GROUPS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        m = pred["group"] == group
        if m.any():
            ax.scatter(pred["ret"][m], pred["q"][m], s=6, alpha=0.5, color=color, label=group)
    lo = float(min(pred["ret"].min(), pred["q"].min()))
    hi = float(max(pred["ret"].max(), pred["q"].max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="Q = return")
    ax.set_xlabel("realised discounted return")
    ax.set_ylabel("Q of the recorded chunk (pessimistic)")
    ax.set_title(title or "held-out chunks")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_diagnostics(critic, dataset, out_dir: str | Path, policy: ChunkPolicy | None = None,
                      batch_size: int = 256, value_samples: int = 8, device="cpu", extra: dict | None = None,
                      bootstrap: int = 200) -> dict:
    """Predict on ``dataset`` (held-out episodes), then write diagnostics.json and q_vs_return.png
    (``bootstrap``: episode resamples behind the ``ci95`` intervals; 0 skips them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pred = predict(critic, dataset, policy, batch_size, value_samples, device)
    result = {"critic": critic.type_name, "gamma": critic.cfg.gamma, "chunk_len": critic.cfg.chunk_len,
              "aggregation": critic.cfg.agg, **(extra or {}), **metrics(pred),
              "ci95": bootstrap_intervals(pred, bootstrap)}
    (out_dir / DIAGNOSTICS).write_text(json.dumps(result, indent=2))
    plot(pred, out_dir / PLOT, f"{critic.type_name} critic, held-out chunks")
    return result
