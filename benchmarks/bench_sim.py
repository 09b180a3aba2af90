"""Simulation throughput, printed as JSON.

For each task: env steps per second with states only and with both cameras, next to raw
``mujoco.mj_step`` on the same model (expressed in control steps: physics steps per second
divided by the substeps of one env step); the ratio is the wrapper's overhead. Then
vectorised throughput (total env steps per second) for 1, 2 and 4 envs, synchronous and
asynchronous (subprocesses).

    MUJOCO_GL=egl python benchmarks/bench_sim.py [--steps 300] [--image-size 64] [--tasks reach pick_place]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import mujoco
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")

import sim  # noqa: E402


def actions(env, n: int, seed: int = 0) -> np.ndarray:
    """Random TCP targets near the start pose: the arm moves but stays in its workspace."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    base = env.unwrapped.hold_action()
    out = np.repeat(base[None], n, axis=0)
    out[:, :3] += rng.uniform(-0.05, 0.05, (n, 3))
    out[:, 3] = rng.random(n) > 0.5
    return out.astype(np.float32)


def env_rate(env, acts: np.ndarray) -> float:
    env.reset(seed=0)
    t0 = time.perf_counter()
    for a in acts:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    return len(acts) / (time.perf_counter() - t0)


def raw_rate(env, n: int) -> float:
    """Raw physics steps per second on the same model and state."""
    base = env.unwrapped
    base.reset(seed=0)
    m, d = base.model, base.data
    t0 = time.perf_counter()
    for _ in range(n):
        mujoco.mj_step(m, d)
    return n / (time.perf_counter() - t0)


def vector_rate(name: str, num_envs: int, asynchronous: bool, steps: int) -> float:
    venv = sim.make_vector(name, num_envs, asynchronous=asynchronous, max_steps=10**9)
    acts = actions(sim.make(name), steps)
    venv.reset(seed=list(range(num_envs)))
    t0 = time.perf_counter()
    for a in acts:
        venv.step(np.repeat(a[None], num_envs, axis=0))
    rate = steps * num_envs / (time.perf_counter() - t0)
    venv.close()
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--tasks", nargs="*", default=sim.task_names())
    p.add_argument("--vector-task", default="pick_place")
    args = p.parse_args()

    tasks = {}
    for name in args.tasks:
        state_env = sim.make(name, max_steps=10**9)
        cam_env = sim.make(name, obs_mode="both", image_size=args.image_size, max_steps=10**9)
        acts = actions(state_env, args.steps)
        env_rate(state_env, acts[:20])  # warm up
        env_rate(cam_env, acts[:5])  # warm up (creates the renderer)
        state = env_rate(state_env, acts)
        cams = env_rate(cam_env, acts[: max(args.steps // 4, 20)])
        substeps = state_env.unwrapped.substeps
        raw = raw_rate(state_env, args.steps * substeps)
        tasks[name] = {
            "substeps": substeps,
            "env_steps_per_s_state": round(state, 1),
            "env_steps_per_s_both_cameras": round(cams, 1),
            "raw_mj_step_per_s": round(raw, 1),
            "raw_control_steps_per_s": round(raw / substeps, 1),
            "ratio_state_vs_raw": round(state / (raw / substeps), 3),
            "ratio_cameras_vs_raw": round(cams / (raw / substeps), 3),
        }
    vector = {}
    for mode in ("sync", "async"):
        vector[mode] = {
            str(n): round(vector_rate(args.vector_task, n, mode == "async", args.steps), 1) for n in (1, 2, 4)
        }
    print(json.dumps({
        "benchmark": "sim",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "mujoco": mujoco.__version__,
                    "gl": os.environ.get("MUJOCO_GL")},
        "image_size": args.image_size,
        "control_hz": 10,
        "tasks": tasks,
        "vector_env_steps_per_s": {"task": args.vector_task, "obs_mode": "state", **vector},
    }, indent=2))


if __name__ == "__main__":
    main()
