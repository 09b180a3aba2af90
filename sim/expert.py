"""Scripted experts: follow a task's plan, with adjustable imperfection for mixed-quality data.

``make_expert(env, noise=..., hesitation=..., wrong_first_attempt=..., seed=...)`` gives an
Agent (``reset(seed)``, ``act(obs) -> action``). Built-in tasks use their privileged plan
(``ArmEnv.expert_waypoint``); any env can use a user's own ``obs -> action`` callable
(``expert=<module>:<callable>``), wrapped by ``CallableExpert`` with the same noise and
hesitation.

Imperfection:
    noise                 std (action units; metres for the TCP target) of Gaussian noise on
                          each action (the built-in expert perturbs x, y, z only)
    hesitation            probability per step of pausing (holding still) for 1-3 steps
    wrong_first_attempt   probability per episode of first heading for a distractor (the other
                          object or goal), pausing there, then doing the task
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np

from vla.errors import ConfigError


class ScriptedExpert:
    """The built-in expert of an ``ArmEnv`` task."""

    def __init__(self, env, noise: float = 0.0, hesitation: float = 0.0, wrong_first_attempt: float = 0.0,
                 seed: int | None = None):
        from sim.base import ArmEnv

        self.env = env.unwrapped
        if not isinstance(self.env, ArmEnv):
            raise ConfigError(
                f"the built-in scripted expert needs one of the sim tasks, got {type(self.env).__name__}; "
                "pass expert=<module>:<callable> for other envs"
            )
        _check_imperfection(noise, hesitation, wrong_first_attempt)
        self.noise, self.hesitation, self.wrong_first_attempt = float(noise), float(hesitation), float(wrong_first_attempt)
        self._seed = seed
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(self._seed if seed is None else seed)
        self.mem: dict = {"slack": 2.0 * self.noise}
        self.pause = 0
        self.decoy = self.rng.random() < self.wrong_first_attempt
        self.decoy_steps = 0
        self.last_g = 0.0

    def act(self, obs: dict | None = None) -> np.ndarray:
        env = self.env
        tcp = env.tcp
        if self.decoy:
            wp, g, step = env.decoy_point() + [0.0, 0.0, 0.07], 0.0, 0.025
            if np.linalg.norm(tcp - wp) < 0.02:
                self.decoy_steps += 1
            self.decoy = self.decoy_steps < 3 and env.steps < env.max_steps // 3
        else:
            wp, g, step = env.expert_waypoint(self.mem)
        if self.pause > 0 or (self.hesitation > 0 and self.rng.random() < self.hesitation):
            # hesitate: hold still (a fresh pause lasts 1-3 steps)
            self.pause = self.pause - 1 if self.pause > 0 else int(self.rng.integers(0, 3))
            return env.command_to_action(tcp, self.last_g)
        delta = wp - tcp
        dist = np.linalg.norm(delta)
        cmd = tcp + (delta * (step / dist) if dist > step else delta)
        if self.noise > 0:
            cmd = cmd + self.rng.normal(0.0, self.noise, 3)
        self.last_g = g
        return env.command_to_action(cmd, g)


class CallableExpert:
    """A user's ``obs -> action`` controller as an Agent, with optional noise and hesitation."""

    def __init__(self, fn: Callable[[dict], np.ndarray], action_space=None, noise: float = 0.0,
                 hesitation: float = 0.0, seed: int | None = None):
        _check_imperfection(noise, hesitation, 0.0)
        self.fn, self.action_space = fn, action_space
        self.noise, self.hesitation, self._seed = float(noise), float(hesitation), seed
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(self._seed if seed is None else seed)
        self.pause, self.last = 0, None
        if hasattr(self.fn, "reset"):
            self.fn.reset()

    def act(self, obs: dict) -> np.ndarray:
        action = np.asarray(self.fn(obs), dtype=np.float32)
        if self.last is not None and (self.pause > 0 or (self.hesitation > 0 and self.rng.random() < self.hesitation)):
            self.pause = self.pause - 1 if self.pause > 0 else int(self.rng.integers(0, 3))
            return self.last
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, action.shape).astype(np.float32)
            if self.action_space is not None and hasattr(self.action_space, "low"):
                action = np.clip(action, self.action_space.low, self.action_space.high)
        self.last = action
        return action


def load_callable(spec: str) -> Callable:
    """'package.module:name' -> the object (a function, or a class that is instantiated with no arguments)."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(f"expert must be '<module>:<callable>', got {spec!r}")
    mod_name, attr = spec.split(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"expert {spec!r}: cannot import module '{mod_name}': {e}") from e
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        raise ConfigError(f"expert {spec!r}: module '{mod_name}' has no callable '{attr}'")
    return obj() if isinstance(obj, type) else obj


def make_expert(env, fn: str | Callable | None = None, noise: float = 0.0, hesitation: float = 0.0,
                wrong_first_attempt: float = 0.0, seed: int | None = None):
    """The built-in expert of a sim task, or a user's controller (``fn``) wrapped as an Agent."""
    if fn is None:
        return ScriptedExpert(env, noise, hesitation, wrong_first_attempt, seed)
    if wrong_first_attempt:
        raise ConfigError("wrong_first_attempt needs the built-in expert (it knows the distractors)")
    fn = load_callable(fn) if isinstance(fn, str) else fn
    return CallableExpert(fn, getattr(env, "action_space", None), noise, hesitation, seed)


def _check_imperfection(noise: float, hesitation: float, wrong: float) -> None:
    if noise < 0:
        raise ConfigError(f"expert noise must be >= 0, got {noise}")
    for name, p in (("hesitation", hesitation), ("wrong_first_attempt", wrong)):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"expert {name} must be a probability in [0, 1], got {p}")
