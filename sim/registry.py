"""Task registry: ``make(name, **overrides)``, config-driven construction, Gymnasium ids, vector envs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import gymnasium as gym

from sim.base import ArmEnv
from sim.tasks.pick_place import PickPlaceEnv
from sim.tasks.push import PushEnv
from sim.tasks.reach import ReachEnv
from sim.tasks.stack import StackEnv
from vla.errors import ConfigError

# In order of difficulty.
TASKS: dict[str, type[ArmEnv]] = {
    "reach": ReachEnv,
    "push": PushEnv,
    "pick_place": PickPlaceEnv,
    "stack": StackEnv,
}
GYM_IDS = {
    "reach": "VLASim/Reach-v0",
    "push": "VLASim/Push-v0",
    "pick_place": "VLASim/PickPlace-v0",
    "stack": "VLASim/Stack-v0",
}
GYM = "gym"  # the name that selects the adapter for any Gymnasium env


def task_names() -> list[str]:
    return list(TASKS)


def _options(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p not in ("self", "env")]


def make(name: str, **overrides) -> gym.Env:
    """A sim task by name (``reach``, ``push``, ``pick_place``, ``stack``), or ``gym`` with ``id=``.

    Overrides are the task's constructor options (``task``, ``obs_mode``, ``image_size``,
    ``cameras``, ``max_steps``, ``reward``, ``control``, ``control_hz``, ``render_mode``...).
    """
    if name == GYM:
        from sim.gym_adapter import make_gym

        return make_gym(**overrides)
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'; known: {', '.join(TASKS)} (or '{GYM}' with id=<gym id>)")
    cls = TASKS[name]
    allowed = _options(cls.__init__)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ConfigError(f"{name}: unknown option(s) {unknown}; known: {allowed}")
    return cls(**overrides)


# Keys of an env config that describe the task's data for the policy rather than configure the env.
POLICY_KEYS = ("state_layout",)


def env_options(cfg: Mapping) -> tuple[str, dict]:
    """The task name and constructor options of an ``env`` config entry (None means default)."""
    opts = {k: v for k, v in _plain(cfg).items() if v is not None and k not in POLICY_KEYS}
    if "name" not in opts:
        raise ConfigError("env config has no 'name' (a task name, or 'gym')")
    return opts.pop("name"), opts


def make_from_config(cfg: Mapping) -> gym.Env:
    """An env from an ``env`` config group entry: ``name`` plus options (None means default)."""
    name, opts = env_options(cfg)
    return make(name, **opts)


def env_fn(name: str, **overrides) -> Callable[[], gym.Env]:
    """A picklable-enough factory for vector envs."""
    return lambda: make(name, **overrides)


def make_vector(name: str, num_envs: int, asynchronous: bool = False, **overrides) -> gym.vector.VectorEnv:
    """``num_envs`` copies of a task in a Gymnasium vector env (autoreset disabled: callers reset)."""
    fns = [env_fn(name, **overrides) for _ in range(int(num_envs))]
    mode = gym.vector.AutoresetMode.DISABLED
    if asynchronous:
        # the 'task' string cannot live in shared memory
        return gym.vector.AsyncVectorEnv(fns, shared_memory=False, autoreset_mode=mode)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)


def register_envs() -> None:
    """Register every task with Gymnasium (``gym.make("VLASim/PickPlace-v0", task=...)``)."""
    for name, gym_id in GYM_IDS.items():
        if gym_id not in gym.registry:
            cls = TASKS[name]
            gym.register(id=gym_id, entry_point=f"{cls.__module__}:{cls.__name__}", disable_env_checker=True)


def _plain(cfg) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    return dict(cfg)
