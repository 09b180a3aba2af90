"""Evaluate a policy checkpoint in simulation: success rate with a 95% Wilson interval.

    python scripts/evaluate.py env=<task> policy_path=<ckpt> episodes=50 out=<dir>
    python scripts/evaluate.py env=<task> policy_path=<ckpt> critic_path=<ckpt> rerank.n=16 ...

Episodes run over seeds from ``seed`` on (10000 by default, never a collection seed) in a
vector env of ``num_envs`` copies, each acting through a receding-horizon ChunkAgent. Writes
<out>/metrics.json, <out>/success.png (per instruction) and a few GIFs of the first seeds.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from vla.errors import ConfigError, VLAError

log = logging.getLogger("vla.evaluate")


def evaluate_policy(cfg: dict) -> dict:
    """Run the evaluation that ``cfg`` (configs/evaluate.yaml) describes; returns the metrics."""
    import sim
    from policies import load_policy
    from vla.agent import ChunkAgent, check_env, execute_steps_for
    from vla.checkpoint import atomic_write_json
    from vla.rollout import evaluate, run_episode, wilson_interval
    from vla.train import set_threads

    for key in ("env", "policy_path", "out"):
        if cfg.get(key) in (None, "", "???"):
            raise ConfigError(f"missing config value '{key}' (e.g. {key}=...)")
    name, opts = sim.env_options(cfg["env"])
    if int(cfg.get("episodes") or 0) < 1:
        raise ConfigError(f"episodes must be >= 1, got {cfg.get('episodes')}")
    out = Path(cfg["out"])
    device = cfg.get("device") or "cpu"
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    set_threads(int(cfg.get("threads") or 0), device)
    policy = load_policy(cfg["policy_path"], device=device)
    probe = sim.make(name, **opts)
    check_env(policy, probe, f"env '{name}'")
    cameras = [k for k in probe.observation_space.spaces if k.startswith("observation.images.")]
    probe.close()
    make_planner = _planner_factory(cfg, policy, device)
    execute = execute_steps_for(policy, cfg.get("execute_steps"))

    def agent_factory():
        return ChunkAgent(policy, execute, device=device, planner=make_planner() if make_planner else None)

    seeds = list(range(int(cfg["seed"]), int(cfg["seed"]) + int(cfg["episodes"])))
    venv = sim.make_vector(name, int(cfg.get("num_envs") or 1), **opts)
    try:
        result = evaluate(venv, agent_factory, seeds)
    finally:
        venv.close()
    metrics = {**result.summary(), "mean_steps": float(np.mean(result.lengths)), "env": name,
               "policy_path": str(cfg["policy_path"]), "critic_path": cfg.get("critic_path"),
               "rerank": cfg.get("rerank") if cfg.get("critic_path") else None, "execute_steps": execute,
               "seeds": [seeds[0], seeds[-1]], "per_task": {}, "videos": []}
    for task in sorted(set(result.tasks)):
        wins = [s for s, t in zip(result.successes, result.tasks, strict=True) if t == task]
        metrics["per_task"][task] = {"episodes": len(wins), "success_rate": float(np.mean(wins)),
                                     "ci95": list(wilson_interval(sum(wins), len(wins)))}
    metrics["episodes_detail"] = [{"seed": s, "task": t, "success": w, "steps": n} for s, t, w, n in
                                  zip(result.seeds, result.tasks, result.successes, result.lengths, strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    if int(cfg.get("videos") or 0) > 0 and (cameras or name in sim.TASKS):
        import imageio.v3 as iio

        env = sim.make(name, **opts, **({} if cameras else {"render_mode": "rgb_array"}))
        for seed in seeds[: int(cfg["videos"])]:
            ep = run_episode(env, agent_factory(), seed=seed, record_video=True)
            path = out / f"rollout_seed{seed}_{'success' if ep.success else 'failure'}.gif"
            iio.imwrite(path, np.stack(ep.frames), extension=".gif", duration=1000 / env.metadata["render_fps"], loop=0)
            metrics["videos"].append(path.name)
        env.close()
    _plot(metrics, out / "success.png")
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _planner_factory(cfg: dict, policy, device: str):
    """None without a critic; otherwise a maker of best-of-N re-rankers (one per agent: they hold an RNG)."""
    if not cfg.get("critic_path"):
        return None
    try:
        from critics.rerank import RerankConfig, Reranker
    except ModuleNotFoundError as e:
        if e.name not in ("critics", "critics.rerank"):
            raise
        raise ConfigError("critic_path given, but re-ranking (critics.rerank) is not available") from None
    from critics import load_critic
    critic = load_critic(cfg["critic_path"], device=device)
    try:
        rerank = RerankConfig(**(cfg.get("rerank") or {}))
    except TypeError as e:
        raise ConfigError(f"bad rerank options {cfg.get('rerank')}: {e}") from None
    return lambda: Reranker(policy, critic, rerank)


def _plot(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"all": metrics, **metrics["per_task"]}
    rates = [r["success_rate"] for r in rows.values()]
    err = np.array([[r["success_rate"] - r["ci95"][0], r["ci95"][1] - r["success_rate"]] for r in rows.values()]).T
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(rows), 3.5))
    ax.bar(range(len(rows)), rates, yerr=err, capsize=4, color=["tab:blue"] + ["tab:gray"] * (len(rows) - 1))
    ax.set_xticks(range(len(rows)), [f"{k}\n(n={r['episodes']})" for k, r in rows.items()], fontsize=7)
    ax.set(ylim=(0, 1), ylabel="success rate (95% CI)", title=f"{metrics['env']}: {Path(metrics['policy_path']).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(metrics: dict) -> None:
    rows = [("all", metrics), *metrics["per_task"].items()]
    width = max(len(k) for k, _ in rows)
    print(f"{'instruction':<{width}}  episodes  success  95% CI")
    for key, r in rows:
        lo, hi = r["ci95"]
        print(f"{key:<{width}}  {r['episodes']:>8}  {r['success_rate']:>7.1%}  [{lo:.2f}, {hi:.2f}]")
    print(f"mean steps {metrics['mean_steps']:.1f}; metrics.json, success.png and {len(metrics['videos'])} videos written")


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("vla").setLevel(logging.INFO)
    try:
        metrics = evaluate_policy(OmegaConf.to_container(cfg, resolve=True))
    except VLAError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print_table(metrics)


if __name__ == "__main__":
    main()
