"""Any Gymnasium env in our observation keys, so external benchmarks plug in as ``env=gym env.id=<id>``.

``GymAdapter`` turns

* an array observation into ``observation.state`` (flattened float32), or into
  ``observation.images.<camera>`` when it is an image (uint8, H x W x 3);
* a dict observation into ``observation.state`` (its numeric entries flattened and
  concatenated in sorted key order, nested dicts included) plus one
  ``observation.images.<key>`` per image entry; a string entry named ``task``,
  ``instruction`` or ``language_instruction`` is taken as the instruction;
* rendered frames (``render_mode="rgb_array"``) into ``observation.images.<camera>``
  when ``camera`` is given,

adds the instruction under ``task`` (from ``task=``, else from the env), and copies
``info["success"]`` to ``info["is_success"]``. Ids of the form ``module:Name-v0`` import
``module`` first (Gymnasium's own rule), so a user's package can register its envs.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from vla.errors import ConfigError, DataError, ShapeError
from vla.types import IMAGE_PREFIX, STATE, TASK

INSTRUCTION_KEYS = ("task", "instruction", "language_instruction")
INSTRUCTION_ATTRS = ("task", "instruction", "language_instruction", "task_description")


def _is_image(x) -> bool:
    x = np.asarray(x)
    return x.dtype == np.uint8 and x.ndim == 3 and x.shape[-1] == 3


def _flatten(obs, prefix: str = ""):
    """Yield (key, value) leaves of a (nested) dict observation in sorted key order."""
    if isinstance(obs, dict):
        for k in sorted(obs):
            yield from _flatten(obs[k], f"{prefix}{k}" if not prefix else f"{prefix}.{k}")
    else:
        yield prefix, obs


class GymAdapter(gym.Wrapper):
    """Wrap ``env`` so that it speaks our observation keys, with instruction ``task``."""

    def __init__(self, env: gym.Env, task: str | None = None, camera: str | None = None):
        super().__init__(env)
        self.camera = camera
        if camera is not None and env.render_mode != "rgb_array":
            raise ConfigError(f"gym env {self._id()}: camera={camera!r} needs render_mode='rgb_array'")
        self._task_override = task
        self.task = task or self._env_instruction()
        # probe one observation for the shapes (vector envs need the space up front)
        obs, _ = env.reset(seed=0)
        sample = self._convert(obs)
        spaces = {}
        for key, value in sample.items():
            if key == TASK:
                continue
            if key.startswith(IMAGE_PREFIX):
                spaces[key] = gym.spaces.Box(0, 255, value.shape, np.uint8)
            else:
                spaces[key] = gym.spaces.Box(-np.inf, np.inf, value.shape, np.float32)
        from sim.base import TEXT_SPACE

        spaces[TASK] = TEXT_SPACE
        self.observation_space = gym.spaces.Dict(spaces)
        space = env.action_space
        if isinstance(space, gym.spaces.Discrete):
            self.action_dim = 1
        elif isinstance(space, gym.spaces.Box):
            self.action_dim = int(np.prod(space.shape))
        else:
            raise ConfigError(f"gym env {self._id()}: action space {space} is not supported (Box or Discrete)")

    def _id(self) -> str:
        spec = self.env.spec
        return spec.id if spec is not None else type(self.env.unwrapped).__name__

    def _env_instruction(self) -> str | None:
        for attr in INSTRUCTION_ATTRS:
            try:
                value = self.env.get_wrapper_attr(attr)
            except AttributeError:
                continue
            if isinstance(value, str) and value:
                return value
        return None

    # -- conversion -----------------------------------------------------------------
    def _convert(self, obs) -> dict:
        out: dict = {}
        state: list[np.ndarray] = []
        instruction = None
        if isinstance(obs, dict):
            for key, value in _flatten(obs):
                if isinstance(value, str):
                    if key in INSTRUCTION_KEYS:
                        instruction = value
                elif _is_image(value):
                    out[IMAGE_PREFIX + key.replace("/", "_")] = np.asarray(value)
                else:
                    state.append(np.asarray(value, dtype=np.float32).reshape(-1))
        elif _is_image(obs):
            out[IMAGE_PREFIX + (self.camera or "front")] = np.asarray(obs)
        else:
            state.append(np.asarray(obs, dtype=np.float32).reshape(-1))
        if state:
            out[STATE] = np.concatenate(state)
        if self.camera is not None:
            frame = self.env.render()
            if not _is_image(frame):
                raise DataError(f"gym env {self._id()}: render() gave {type(frame).__name__}, not an RGB frame")
            out[IMAGE_PREFIX + self.camera] = np.asarray(frame)
        task = self._task_override or instruction or self._env_instruction()
        if not task:
            raise ConfigError(
                f"gym env {self._id()} has no instruction (no task/instruction attribute or observation key); "
                "pass task='...'"
            )
        self.task = task
        out[TASK] = task
        return out

    def check_action(self, action):
        space = self.env.action_space
        a = np.asarray(action)
        if isinstance(space, gym.spaces.Discrete):
            if a.size != 1 or not np.isfinite(a.astype(np.float64)).all():
                raise ShapeError(f"gym env {self._id()}: discrete action must be one finite number, got {a.tolist()}")
            return int(np.rint(a.reshape(-1)[0]))
        if a.size != self.action_dim:
            raise ShapeError(f"gym env {self._id()}: action has shape {a.shape}, expected {space.shape}")
        a = a.astype(space.dtype).reshape(space.shape)
        if not np.isfinite(a).all():
            raise DataError(f"gym env {self._id()}: action contains NaN or infinity: {a.tolist()}")
        return a

    # -- gymnasium API ----------------------------------------------------------------
    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._convert(obs), self._info(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(self.check_action(action))
        return self._convert(obs), float(reward), bool(terminated), bool(truncated), self._info(info)

    @staticmethod
    def _info(info: dict) -> dict:
        info = dict(info)
        info["is_success"] = bool(info.get("is_success", info.get("success", False)))
        return info


def make_gym(id: str | None = None, task: str | None = None, camera: str | None = None,
             max_steps: int | None = None, kwargs: dict | None = None, **extra) -> GymAdapter:
    """``gym.make(id, **kwargs)`` wrapped by ``GymAdapter``; ``camera`` turns on rgb_array rendering."""
    if not id:
        raise ConfigError("env=gym needs env.id=<gymnasium id> (e.g. CartPole-v1 or mypkg.envs:MyEnv-v0)")
    kwargs = {**(kwargs or {}), **extra}
    if camera is not None:
        kwargs.setdefault("render_mode", "rgb_array")
    if max_steps is not None:
        kwargs["max_episode_steps"] = int(max_steps)
    try:
        env = gym.make(id, **kwargs)
    except gym.error.Error as e:
        raise ConfigError(f"gym env '{id}': {e}") from e
    except ModuleNotFoundError as e:
        raise ConfigError(f"gym env '{id}': cannot import its module: {e}") from e
    return GymAdapter(env, task=task, camera=camera)
