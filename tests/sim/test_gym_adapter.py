"""Any Gymnasium env through the adapter: array and dict observations, rendering, success, ids."""

import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest

import sim
from vla.errors import ConfigError, DataError, ShapeError
from vla.types import STATE, TASK

MODULE = textwrap.dedent('''
    import gymnasium as gym
    import numpy as np

    class Dot(gym.Env):
        """A dot that must reach x = 1; dict observations, rgb_array frames, info["success"]."""
        metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

        def __init__(self, render_mode=None):
            self.render_mode = render_mode
            self.observation_space = gym.spaces.Dict({
                "pos": gym.spaces.Box(-5, 5, (2,), np.float32),
                "extra": gym.spaces.Dict({"vel": gym.spaces.Box(-1, 1, (1,), np.float32)}),
                "eye": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
            })
            self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

        def _obs(self):
            eye = np.zeros((8, 8, 3), np.uint8)
            eye[..., 0] = int(40 * (self.pos[0] + 2))
            return {"pos": self.pos.astype(np.float32), "extra": {"vel": np.array([0.5], np.float32)}, "eye": eye}

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.pos = self.np_random.uniform(-1, 0, 2)
            return self._obs(), {}

        def step(self, action):
            self.pos = self.pos + 0.5 * np.asarray(action)
            done = bool(self.pos[0] >= 1.0)
            return self._obs(), float(done), done, False, {"success": done}

        def render(self):
            return np.full((12, 10, 3), 128, np.uint8)

    gym.register("DotDict-v0", entry_point=Dot, max_episode_steps=20)
''')


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    (tmp_path / "my_bench_envs.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_bench_envs"
    sys.modules.pop("my_bench_envs", None)
    gym.registry.pop("DotDict-v0", None)


def test_array_observation_env_with_instruction():
    env = sim.make("gym", id="CartPole-v1", task="balance the pole")
    obs, info = env.reset(seed=0)
    assert set(obs) == {STATE, TASK} and obs[STATE].shape == (4,) and obs[STATE].dtype == np.float32
    assert obs[TASK] == "balance the pole" and info["is_success"] is False
    assert env.observation_space[STATE].shape == (4,) and env.action_dim == 1
    obs, reward, terminated, truncated, info = env.step(np.array([1.0]))
    assert isinstance(reward, float) and "is_success" in info
    with pytest.raises(ShapeError, match="discrete action"):
        env.step(np.array([0.0, 1.0]))


def test_missing_instruction_is_an_error():
    with pytest.raises(ConfigError, match="no instruction.*task="):
        sim.make("gym", id="CartPole-v1")
    with pytest.raises(ConfigError, match="env.id"):
        sim.make("gym")
    with pytest.raises(ConfigError, match="NoSuchEnv"):
        sim.make("gym", id="NoSuchEnv-v0", task="x")


def test_module_prefixed_id_dict_observations_camera_and_success(user_package):
    env = sim.make_from_config({"name": "gym", "id": f"{user_package}:DotDict-v0", "task": "move right",
                                "camera": "front", "max_steps": None, "kwargs": {}})
    obs, _ = env.reset(seed=1)
    assert set(obs) == {STATE, "observation.images.eye", "observation.images.front", TASK}
    assert obs[STATE].shape == (3,)  # extra.vel then pos: sorted keys, nested dicts flattened
    assert obs[STATE][0] == pytest.approx(0.5)
    assert obs["observation.images.eye"].shape == (8, 8, 3)
    assert obs["observation.images.front"].shape == (12, 10, 3)
    assert env.observation_space.contains(obs)
    done = False
    for _ in range(10):
        obs, reward, done, truncated, info = env.step(np.array([1.0, 0.0]))
        if done:
            break
    assert done and info["is_success"] is True
    with pytest.raises(DataError, match="NaN"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ShapeError, match=r"expected \(2,\)"):
        env.step(np.zeros(3))


def test_user_expert_runs_on_an_adapted_env(user_package):
    from vla.rollout import run_episode

    env = sim.make("gym", id=f"{user_package}:DotDict-v0", task="move right")
    expert = sim.make_expert(env, fn=lambda obs: np.array([1.0, 0.0], np.float32))
    res = run_episode(env, expert, seed=0)
    assert res.success and res.task == "move right"
