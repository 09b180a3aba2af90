"""MuJoCo tasks with language instructions, scripted experts, interveners, and the Gymnasium adapter.

    import sim
    env = sim.make("pick_place", obs_mode="both", image_size=64)   # or sim.make("gym", id="CartPole-v1", task="...")
    expert = sim.make_expert(env, noise=0.01)                        # an Agent: reset(seed), act(obs)
    intervener = sim.ScriptedIntervener.for_env(env, sim.make_expert(env))

Tasks, easiest first: reach, push, pick_place, stack (``sim.task_names()``); each is also
registered with Gymnasium as ``VLASim/<Name>-v0``. The observation and action spaces are
documented in ``sim/base.py``.
"""

import os

if not os.environ.get("DISPLAY"):  # headless: MuJoCo renders offscreen through EGL unless told otherwise
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
# Mesa's software rasteriser (llvmpipe) renders in the calling thread: a process forked after a frame
# was rendered (the demo's parallel stages, vector envs) would otherwise hang on the worker threads
# it did not inherit, and at 64x64 on 2 cores one thread is faster too (143 against 117 steps/s).
os.environ.setdefault("LP_NUM_THREADS", "0")

from sim.base import ArmEnv  # noqa: E402
from sim.expert import CallableExpert, ScriptedExpert, load_callable, make_expert  # noqa: E402
from sim.gym_adapter import GymAdapter, make_gym  # noqa: E402
from sim.intervener import ScriptedIntervener  # noqa: E402
from sim.registry import (  # noqa: E402
    GYM_IDS,
    TASKS,
    env_options,
    make,
    make_from_config,
    make_vector,
    register_envs,
    task_names,
)
from sim.teleop import KeyEvents, TeleopIntervener  # noqa: E402

register_envs()

__all__ = [
    "GYM_IDS",
    "TASKS",
    "ArmEnv",
    "CallableExpert",
    "GymAdapter",
    "KeyEvents",
    "ScriptedExpert",
    "ScriptedIntervener",
    "TeleopIntervener",
    "env_options",
    "load_callable",
    "make",
    "make_expert",
    "make_from_config",
    "make_gym",
    "make_vector",
    "register_envs",
    "task_names",
]
