"""Critic quality on sim data: held-out Spearman (value vs realised return) and AUROC (success).

The whole loop, through the command-line entry points (each command is recorded):

1. noisy expert demonstrations      scripts/collect.py source=expert expert.noise=...
2. a behaviour-cloned base policy   scripts/train.py (deliberately short: an imperfect policy)
3. its rollouts, with a scripted intervener that takes over late and briefly, so that some
   rollouts are rescued and some still fail (the default intervener rescues nearly all,
   which leaves too few failures to measure an AUROC)
                                    scripts/collect.py source=policy intervener=scripted scripted.*=...
4. each critic on demos + rollouts  scripts/train_critic.py critic=<name> policy_path=<2.>
5. the held-out diagnostics that step 4 wrote (<out>/diagnostics.json)

    python benchmarks/bench_critics.py --threads 1                      # reach task, ALOE and Cal-QL
    python benchmarks/bench_critics.py --env push --critics aloe calql iql vqh --work /tmp/bc

Steps whose output already exists in ``--work`` are skipped (delete it to start over).
Prints one JSON record and writes it to benchmarks/results/critics.json (``--results``).
Targets from the issue: Spearman >= 0.7 and AUROC >= 0.8 on held-out episodes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"spearman": 0.7, "auroc": 0.8}
# takes over after 8 straying steps (+4 steps of reaction), corrects for 2-4 steps, hands back
LAZY = ["scripted.patience=8", "scripted.delay=4", "scripted.min_control=2", "scripted.max_control=4"]


def _shown(cmd: list) -> str:
    return " ".join(["python", *[str(c).replace(str(REPO) + "/", "") for c in cmd[1:]]])


def _env(threads: int | None) -> dict:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "HF_HUB_OFFLINE": "1"}
    if threads:  # on a shared machine, oversubscribed OpenMP threads stall each other
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run(cmds: list[tuple[list, Path]], log: list[dict], threads: int | None = None, stagger: float = 0.0) -> None:
    """Run entry points side by side (each skipped when its output exists), recording commands and wall times.

    ``stagger`` seconds between starts, so that the processes' data loading does not coincide.
    """
    procs = []
    for cmd, done in cmds:
        if done.exists():
            log.append({"command": _shown(cmd), "skipped": "output exists"})
        else:
            if procs:
                time.sleep(stagger)
            procs.append((cmd, time.time(), subprocess.Popen(cmd, cwd=REPO, env=_env(threads), text=True,
                                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for cmd, t0, proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"command failed ({proc.returncode}): {_shown(cmd)}\n{err[-3000:]}")
        log.append({"command": _shown(cmd), "wall_s": round(time.time() - t0, 1)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="reach")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_critics"))
    p.add_argument("--results", type=Path, default=REPO / "benchmarks/results/critics.json")
    p.add_argument("--demos", type=int, default=300)
    p.add_argument("--noise", type=float, default=0.02, help="expert action noise (m)")
    p.add_argument("--rollouts", type=int, default=300)
    p.add_argument("--intervener", nargs="*", default=LAZY, help="overrides of the scripted intervener")
    p.add_argument("--policy", default="tiny")
    p.add_argument("--policy-steps", type=int, default=1000)
    p.add_argument("--critics", nargs="+", default=["aloe", "calql"])
    p.add_argument("--critic-steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every command")
    p.add_argument("--critic-overrides", nargs="*", default=[], help="extra overrides for every train_critic run")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    py, w = sys.executable, args.work
    w.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    t0 = time.time()
    demos, policy, rollouts = w / "demos", w / "policy", w / "rollouts"
    run([([py, REPO / "scripts/collect.py", f"env={args.env}", "source=expert", f"episodes={args.demos}",
           f"expert.noise={args.noise}", f"seed={args.seed}", f"out={demos}", "progress=false"],
          demos / "meta/info.json")], log, args.threads)
    run([([py, REPO / "scripts/train.py", f"policy={args.policy}", f"env={args.env}", f"data=[{demos}]",
           f"out={policy}", f"steps={args.policy_steps}", f"seed={args.seed}", "train.progress=false"],
          policy / "checkpoints/last")], log, args.threads)
    run([([py, REPO / "scripts/collect.py", f"env={args.env}", "source=policy", f"policy_path={policy}",
           "intervener=scripted", *args.intervener, f"episodes={args.rollouts}", f"seed={args.seed + 10_000}",
           f"out={rollouts}", "progress=false"], rollouts / "meta/info.json")], log, args.threads)
    # the critics train side by side (one core each with --threads 1)
    run([([py, REPO / "scripts/train_critic.py", f"critic={name}", f"data=[{demos},{rollouts}]",
           f"policy_path={policy}", f"out={w / f'critic_{name}'}", f"steps={args.critic_steps}",
           f"batch_size={args.batch_size}", f"seed={args.seed}", "resume=true", "train.progress=false",
           *args.critic_overrides], w / f"critic_{name}" / "diagnostics.json") for name in args.critics],
        log, args.threads, stagger=30.0)

    results = {}
    for name in args.critics:
        out = w / f"critic_{name}"
        d = json.loads((out / "diagnostics.json").read_text())
        results[name] = {
            "spearman_q": d["spearman_q"], "auroc_q": d["auroc_q"],
            "spearman_v": d.get("spearman_v"), "auroc_v": d.get("auroc_v"),
            "held_out_episodes": d["held_out_episodes"], "held_out_chunks": d["chunks"],
            "held_out_success_rate": d["success_rate"],
            "by_source": {g: {k: v for k, v in b.items() if k in ("chunks", "spearman_q", "auroc_q", "success_rate")}
                          for g, b in d["by_source"].items()},
            "meets_targets": bool((d["spearman_q"] or 0) >= TARGETS["spearman"] and (d["auroc_q"] or 0) >= TARGETS["auroc"]),
        }
    record = {
        "benchmark": "critics",
        "env": args.env,
        "targets": TARGETS,
        "critics": results,
        "commands": log,
        "wall_s": round(time.time() - t0, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "note": "values are Q of the recorded chunk (pessimistic aggregate); returns follow the critic's "
                "reward (-1 per step, 0 at success) and time-out convention; held-out = 20% of episodes",
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
