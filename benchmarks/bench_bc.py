"""Behaviour cloning on this machine's CPU: success over unseen seeds and training time, as JSON.

For each task: collect ``--demos`` expert episodes (scripts/collect.py, seeds 0..), train a
flow and a diffusion policy on them (scripts/train.py, the default configs plus the task's
overrides below), and evaluate each on ``--episodes`` unseen seeds (scripts/evaluate.py,
seeds from 10000). Every number comes from the project's own entry points, run as
subprocesses with the exact command lines recorded in the output. Also measures one
training step with 1 and 2 torch threads (why ``train.threads`` defaults to 1 on the CPU).

    python benchmarks/bench_bc.py [--tasks reach pick_place] [--heads flow diffusion] \
        [--demos 100] [--episodes 50] [--jobs 2] [--work /tmp/bench_bc] [--write benchmarks/results/bc.json]

``--jobs`` runs that many train-and-evaluate pipelines side by side (one torch thread each).

Target (issue 4): >= 80% on reach and >= 50% on pick_place, each within 30 minutes of CPU
training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import PY, ROOT, emit, run

# Training overrides per task (on top of configs/train.yaml and configs/policy/<head>.yaml).
FROM_SCRATCH = ["batch_size=64", "train.lr=1e-3", "train.warmup_steps=100"]
TRAIN = {
    "reach": ["steps=3000", *FROM_SCRATCH],
    "pick_place": ["steps=6000", *FROM_SCRATCH],
}
TARGET = {"reach": 0.8, "pick_place": 0.5}


def step_time(data: str, threads: int, steps: int = 20) -> float:
    """Seconds per BC optimiser step (default flow policy, batch 64) with ``threads`` torch threads."""
    code = f"""
import time, torch
torch.set_num_threads({threads})
from omegaconf import OmegaConf
from torch.utils.data import default_collate
from policies import build_policy
from vla.data import ChunkDataset, compute_stats
cfg = OmegaConf.to_container(OmegaConf.load("configs/policy/flow.yaml"), resolve=True)
ds = ChunkDataset([{data!r}], chunk_len=cfg["chunk_len"])
p = build_policy(cfg, ds.features, compute_stats(ds))
opt = torch.optim.AdamW(p.parameters(), 1e-4)
b = default_collate([ds[i % len(ds)] for i in range(64)])
def step():
    loss = p.loss(b); opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3): step()
t = time.perf_counter()
for _ in range({steps}): step()
print((time.perf_counter() - t) / {steps})
"""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TRAIN))
    ap.add_argument("--heads", nargs="+", default=["flow", "diffusion"])
    ap.add_argument("--demos", type=int, default=100)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--steps", type=int, default=None, help="override every task's training steps")
    ap.add_argument("--jobs", type=int, default=2, help="train-and-evaluate pipelines run side by side")
    ap.add_argument("--work", default="/tmp/bench_bc", help="demos, runs and evaluations go here")
    ap.add_argument("--write", default=None, help="also write the JSON to this file")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "load_avg_at_start": list(os.getloadavg())},
                     "demos": args.demos, "eval_episodes": args.episodes, "eval_seeds_from": 10000, "runs": []}
    jobs = []
    for task in args.tasks:
        demos = work / f"{task}_demos"
        collect = [PY, "scripts/collect.py", f"env={task}", "source=expert", f"episodes={args.demos}",
                   f"out={demos}", "progress=false"]
        if not demos.exists():
            run(collect, work / f"{task}_collect.log")
        if "step_time_s" not in results:
            results["step_time_s"] = {f"threads_{n}": step_time(str(demos), n) for n in (1, 2)}
            results["step_time_s"]["note"] = "flow policy, batch 64, default sizes; other jobs may share the cores"
        for head in args.heads:
            out = work / f"{task}_{head}"
            if out.exists():
                sys.exit(f"{out} exists: remove it or choose another --work")
            jobs.append((task, head, demos, collect, out))

    def one(task, head, demos, collect, out) -> dict:
        overrides = [o for o in TRAIN.get(task, []) if not (args.steps and o.startswith("steps="))]
        if args.steps:
            overrides.append(f"steps={args.steps}")
        train = [PY, "scripts/train.py", f"policy={head}", f"env={task}", f"data=[{demos}]", f"out={out}",
                 "train.progress=false", *overrides]
        train_s = run(train, work / f"{task}_{head}_train.log")
        evaluate = [PY, "scripts/evaluate.py", f"env={task}", f"policy_path={out}",
                    f"episodes={args.episodes}", "videos=0", f"out={out}/eval"]
        eval_s = run(evaluate, work / f"{task}_{head}_eval.log")
        m = json.loads((out / "eval" / "metrics.json").read_text())
        row = {"task": task, "head": head, "success_rate": m["success_rate"], "ci95": m["ci95"],
               "episodes": m["episodes"], "mean_steps": m["mean_steps"], "execute_steps": m["execute_steps"],
               "train_minutes": round(train_s / 60, 2), "eval_minutes": round(eval_s / 60, 2),
               "target": TARGET.get(task), "meets_target": m["success_rate"] >= TARGET.get(task, 0.0)
               and train_s <= 30 * 60,
               "commands": {"collect": shlex.join(collect), "train": shlex.join(train),
                            "evaluate": shlex.join(evaluate)}}
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    results["jobs_side_by_side"] = args.jobs
    with ThreadPoolExecutor(args.jobs) as pool:
        results["runs"] = list(pool.map(lambda job: one(*job), jobs))
    emit(results, args.write)


if __name__ == "__main__":
    main()
