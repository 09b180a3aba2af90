"""Rollouts: one episode with an optional intervener and recorder, and vectorised evaluation.

``run_episode`` is the loop every stage shares (collection, evaluation, deployment in sim):
the agent proposes an action every step (a ``ChunkAgent`` handles its receding horizon
itself); an intervener may replace it; the env executes; the writer records the executed
action, the policy's proposal and whether a person (or stand-in) was in control.

``evaluate`` runs many seeded episodes over a Gymnasium vector env, one agent per
sub-env. This module knows nothing of sim/: envs come in from the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from vla.errors import ConfigError
from vla.types import IMAGE_PREFIX, SOURCE_DEMO, TASK, Intervener


@dataclass
class EpisodeResult:
    success: bool
    steps: int
    interventions: int  # steps executed by the intervener
    episode_return: float
    seed: int | None = None
    task: str = ""
    takeovers: int = 0  # times control passed to the intervener
    frames: list[np.ndarray] = field(default_factory=list)


def run_episode(
    env: gym.Env,
    agent,
    *,
    intervener: Intervener | None = None,
    writer=None,
    seed: int | None = None,
    max_steps: int | None = None,
    source: str | None = None,
    record_video: bool = False,
    on_step: Callable[[], bool] | None = None,
    keep_failures: bool = True,
) -> EpisodeResult:
    """Run one episode; with ``writer``, record it and end the episode as ``source``
    (a failed episode is discarded instead when ``keep_failures`` is False).

    ``on_step`` (optional) is called after every env step (e.g. to refresh a viewer);
    returning False stops the episode early, and it is then not recorded.
    """
    obs, info = env.reset(seed=seed)
    agent.reset(seed=seed)
    if intervener is not None and hasattr(intervener, "reset"):
        intervener.reset(seed=seed)
    frames = [_frame(env, obs)] if record_video else []
    success, steps, interventions, takeovers, total = False, 0, 0, 0, 0.0
    was_in_control = False
    task = obs.get(TASK, "") if isinstance(obs, dict) else ""
    while max_steps is None or steps < max_steps:
        proposed = np.asarray(agent.act(obs), dtype=np.float32)
        executed, took_over = proposed, False
        if intervener is not None:
            executed, took_over = intervener.act(obs, proposed)
            executed = np.asarray(executed, dtype=np.float32)
        next_obs, reward, terminated, truncated, info = env.step(executed)
        success = bool(info.get("is_success", False))
        done = bool(terminated or truncated)
        steps += 1
        total += float(reward)
        interventions += int(took_over)
        takeovers += int(took_over and not was_in_control)
        was_in_control = bool(took_over)
        if writer is not None:
            writer.add_step(obs, executed, policy_action=proposed, intervention=took_over,
                            reward=float(reward), success=success, done=done or steps == max_steps)
        if record_video:
            frames.append(_frame(env, next_obs))
        obs = next_obs
        if on_step is not None and on_step() is False:
            if writer is not None:
                writer.discard_episode()
            writer = None
            break
        if done:
            break
    if writer is not None:
        if success or keep_failures:
            writer.end_episode(source or SOURCE_DEMO, seed)
        else:
            writer.discard_episode()
    return EpisodeResult(success, steps, interventions, total, seed, task, takeovers, frames)


def _frame(env: gym.Env, obs) -> np.ndarray:
    frame = env.render() if getattr(env, "render_mode", None) == "rgb_array" else None
    if frame is None and isinstance(obs, dict):
        cams = sorted(k for k in obs if k.startswith(IMAGE_PREFIX))
        frame = obs[cams[0]] if cams else None
    if frame is None:
        raise ConfigError("record_video needs render_mode='rgb_array' or a camera in the observation")
    return np.asarray(frame)


@dataclass
class EvalResult:
    successes: list[bool]
    lengths: list[int]
    returns: list[float]
    seeds: list[int]
    tasks: list[str]

    @property
    def episodes(self) -> int:
        return len(self.successes)

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes)) if self.successes else 0.0

    def ci95(self) -> tuple[float, float]:
        """Wilson score interval for the success rate."""
        return wilson_interval(sum(self.successes), self.episodes)

    def summary(self) -> dict:
        lo, hi = self.ci95()
        return {"success_rate": self.success_rate, "episodes": self.episodes, "ci95": [lo, hi],
                "mean_length": float(np.mean(self.lengths)) if self.lengths else 0.0,
                "mean_return": float(np.mean(self.returns)) if self.returns else 0.0}


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def unbatch(obs, i: int):
    """Observation of sub-env ``i`` from a vector env's batched observation."""
    if isinstance(obs, dict):
        return {k: unbatch(v, i) for k, v in obs.items()}
    return obs[i]


def evaluate(
    venv: gym.vector.VectorEnv,
    agent_factory: Callable[[], object],
    seeds: Sequence[int],
    max_steps: int | None = None,
) -> EvalResult:
    """One episode per seed over ``venv`` (autoreset disabled), one agent per sub-env.

    Sub-envs that finish take the next seed; when seeds run out they idle.
    """
    if venv.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.DISABLED:
        raise ConfigError("evaluate() needs a vector env built with autoreset_mode=AutoresetMode.DISABLED")
    n = venv.num_envs
    agents = [agent_factory() for _ in range(n)]
    order = [int(s) for s in seeds]
    queue = list(range(len(order)))  # episode indices still to run
    current: list[int | None] = [None] * n  # episode index each sub-env is running
    lengths, returns = np.zeros(n, dtype=int), np.zeros(n)
    results: dict[int, tuple[bool, int, float, str]] = {}

    def start(mask: np.ndarray):
        nonlocal obs
        seed_list = [None] * n
        for i in np.flatnonzero(mask):
            current[i] = queue.pop(0) if queue else None
            seed_list[i] = None if current[i] is None else order[current[i]]
        obs, _ = venv.reset(seed=seed_list, options={"reset_mask": mask})
        for i in np.flatnonzero(mask):
            agents[i].reset(seed=seed_list[i])
            lengths[i], returns[i] = 0, 0.0

    obs = None
    start(np.ones(n, dtype=bool))
    while any(c is not None for c in current):
        actions = np.stack([
            np.asarray(agents[i].act(unbatch(obs, i)), dtype=np.float32) if current[i] is not None
            else np.asarray(venv.single_action_space.sample(), dtype=np.float32)
            for i in range(n)
        ])
        obs, reward, terminated, truncated, info = venv.step(actions)
        success = np.asarray(info.get("is_success", np.zeros(n, bool)), dtype=bool)
        lengths += 1
        returns += reward
        over = terminated | truncated
        if max_steps is not None:
            over |= lengths >= max_steps
        for i in np.flatnonzero(over):
            if current[i] is not None:
                task = str(unbatch(obs, i).get(TASK, "")) if isinstance(obs, dict) else ""
                results[current[i]] = (bool(success[i]), int(lengths[i]), float(returns[i]), task)
        if over.any():
            start(over)
    rows = [results[k] for k in range(len(order))]
    return EvalResult(
        successes=[r[0] for r in rows],
        lengths=[r[1] for r in rows],
        returns=[r[2] for r in rows],
        seeds=order,
        tasks=[r[3] for r in rows],
    )
