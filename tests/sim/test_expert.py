"""Scripted experts: success rates, imperfection knobs, a user's controller."""

import sys
import types

import numpy as np
import pytest

import sim
from vla.errors import ConfigError
from vla.rollout import run_episode
from vla.types import STATE

TASKS = sim.task_names()


@pytest.mark.parametrize("name", TASKS)
def test_expert_succeeds_on_at_least_95_percent_of_20_seeds(name):
    env = sim.make(name)
    expert = sim.make_expert(env)
    results = [run_episode(env, expert, seed=s) for s in range(20)]
    assert sum(r.success for r in results) >= 19
    assert max(r.steps for r in results) < env.max_steps


def test_imperfect_expert_is_worse_but_still_mostly_succeeds():
    env = sim.make("pick_place")
    clean = [run_episode(env, sim.make_expert(env), seed=s) for s in range(8)]
    sloppy_expert = sim.make_expert(env, noise=0.01, hesitation=0.2, wrong_first_attempt=1.0)
    sloppy = [run_episode(env, sloppy_expert, seed=s) for s in range(8)]
    assert sum(r.success for r in sloppy) >= 6
    assert np.mean([r.steps for r in sloppy]) > np.mean([r.steps for r in clean]) + 5


def test_wrong_first_attempt_visits_the_distractor_first():
    env = sim.make("pick_place", task="put the red cube in the bin")
    expert = sim.make_expert(env, wrong_first_attempt=1.0)
    obs, _ = env.reset(seed=2)
    expert.reset(seed=2)
    blue = env.body_pos("blue")
    closest = np.inf
    for _ in range(15):
        obs, *_ = env.step(expert.act(obs))
        closest = min(closest, np.linalg.norm(env.tcp[:2] - blue[:2]))
    assert closest < 0.02


def test_noise_changes_actions_and_is_seeded():
    env = sim.make("reach")
    obs, _ = env.reset(seed=0)
    clean = sim.make_expert(env).act(obs)
    a = sim.make_expert(env, noise=0.01, seed=5).act(obs)
    b = sim.make_expert(env, noise=0.01, seed=5).act(obs)
    assert np.array_equal(a, b) and not np.allclose(a, clean)


def test_hesitation_holds_still():
    env = sim.make("reach")
    obs, _ = env.reset(seed=0)
    expert = sim.make_expert(env, hesitation=1.0, seed=0)
    action = expert.act(obs)
    assert np.allclose(action[:3], env.tcp, atol=1e-6)


def test_bad_imperfection_values_are_config_errors():
    env = sim.make("reach")
    with pytest.raises(ConfigError, match="hesitation"):
        sim.make_expert(env, hesitation=1.5)
    with pytest.raises(ConfigError, match="noise"):
        sim.make_expert(env, noise=-0.1)


def test_user_controller_from_module_spec(monkeypatch):
    mod = types.ModuleType("my_controllers")

    def go_home(obs):
        return np.array([0.3, 0.0, 0.15, 0.0], dtype=np.float32)

    mod.go_home = go_home
    monkeypatch.setitem(sys.modules, "my_controllers", mod)
    env = sim.make("reach")
    agent = sim.make_expert(env, fn="my_controllers:go_home")
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        obs, *_ = env.step(agent.act(obs))
    assert np.allclose(obs[STATE][5:8], [0.3, 0.0, 0.15], atol=2e-3)
    with pytest.raises(ConfigError, match="no callable 'missing'"):
        sim.make_expert(env, fn="my_controllers:missing")
    with pytest.raises(ConfigError, match="cannot import"):
        sim.make_expert(env, fn="no_such_module_xyz:act")
    with pytest.raises(ConfigError, match="<module>:<callable>"):
        sim.make_expert(env, fn="just_a_name")
