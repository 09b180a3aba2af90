"""Cost of the crash-safe episode writer: per step and per episode, state-only and with a camera.

    python benchmarks/bench_writer.py [--episodes 10] [--steps 50]

Prints JSON. The per-episode cost is dominated by LeRobot's finalise/resume (and video
encoding with cameras), which the writer pays once per episode to make it durable.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from vla.data import EpisodeWriter


def run(spec: dict, episodes: int, steps: int, use_videos: bool) -> dict:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        t_step = t_end = 0.0
        w = EpisodeWriter(Path(d) / "ds", fps=10, obs_spec=spec, action_dim=6, use_videos=use_videos)
        per_episode = []
        for ep in range(episodes):
            for i in range(steps):
                obs = {k: (rng.integers(0, 255, s, dtype=np.uint8) if "images" in k else rng.normal(size=s))
                       for k, s in spec.items()}
                obs["task"] = "pick the red cube"
                t0 = time.perf_counter()
                w.add_step(obs, rng.normal(size=6), intervention=bool(i % 7 == 0), reward=0.0)
                t_step += time.perf_counter() - t0
            t0 = time.perf_counter()
            w.end_episode("demo", seed=ep)
            dt = time.perf_counter() - t0
            t_end += dt
            per_episode.append(dt)
        w.close()
    return {
        "episodes": episodes,
        "steps_per_episode": steps,
        "add_step_us": 1e6 * t_step / (episodes * steps),
        "end_episode_s_mean": t_end / episodes,
        "end_episode_s_first": per_episode[0],
        "end_episode_s_last": per_episode[-1],
        "writer_s_per_step_amortised": (t_step + t_end) / (episodes * steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    out = {
        "state_only": run({"observation.state": (12,)}, args.episodes, args.steps, use_videos=True),
        "state_and_2_cameras_64px_video": run(
            {"observation.state": (12,), "observation.images.front": (64, 64, 3),
             "observation.images.wrist": (64, 64, 3)},
            args.episodes, args.steps, use_videos=True,
        ),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
