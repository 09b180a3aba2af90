"""The scripted intervener: takes over when the policy strays, hands back after a correction."""

import numpy as np
import pytest

import sim
from vla.errors import ConfigError
from vla.rollout import run_episode
from vla.types import Intervener


class BiasedExpert:
    """A deliberately poor policy: the expert, shifted sideways by ``bias`` metres."""

    def __init__(self, env, bias=(0.0, 0.06, 0.0)):
        self.expert = sim.make_expert(env)
        self.bias = np.array(bias, dtype=np.float32)

    def reset(self, seed=None):
        self.expert.reset(seed)

    def act(self, obs):
        a = self.expert.act(obs).copy()
        a[:3] += self.bias
        return a


class Frozen:
    """A policy that never moves: holds the start pose."""

    def __init__(self, env):
        self.env = env

    def reset(self, seed=None):
        self.action = None

    def act(self, obs):
        if self.action is None:
            self.action = self.env.hold_action()
        return self.action


def test_is_an_intervener():
    env = sim.make("reach")
    assert isinstance(sim.ScriptedIntervener.for_env(env, sim.make_expert(env)), Intervener)


@pytest.mark.parametrize("name", sim.task_names())
def test_takes_over_from_a_poor_policy_and_hands_back(name):
    env = sim.make(name)
    iv = sim.ScriptedIntervener.for_env(env, sim.make_expert(env), delay=2, patience=3)
    res = run_episode(env, BiasedExpert(env), intervener=iv, seed=0)
    kinds = [k for _, k in iv.events]
    assert kinds[0] == "takeover"
    assert iv.events[0][0] == 3 + 2  # patience steps to trigger, then the reaction delay
    assert res.interventions > 0 and res.takeovers == kinds.count("takeover")
    if name != "reach":  # reach is over before the first hand-back is due
        assert "handback" in kinds and res.interventions < res.steps
    assert res.success  # with help, the poor policy gets there


def test_leaves_a_good_policy_alone():
    env = sim.make("pick_place")
    iv = sim.ScriptedIntervener.for_env(env, sim.make_expert(env))
    res = run_episode(env, sim.make_expert(env), intervener=iv, seed=1)
    assert res.success and res.interventions == 0 and iv.events == []


def test_stall_triggers_a_takeover():
    env = sim.make("push")
    # proposals are never compared (no action threshold): only the lack of progress counts
    iv = sim.ScriptedIntervener.for_env(env, sim.make_expert(env), action_threshold=None, stall_steps=6, delay=0)
    res = run_episode(env, Frozen(env), intervener=iv, seed=0)
    assert iv.events and iv.events[0] == (7, "takeover")
    assert res.interventions > 0


def test_repeated_takeovers_keep_control_longer():
    env = sim.make("stack")
    iv = sim.ScriptedIntervener.for_env(env, sim.make_expert(env), min_control=4, max_control=40, trust_window=10)
    run_episode(env, BiasedExpert(env), intervener=iv, seed=0)
    spans = [b[0] - a[0] for a, b in zip(iv.events[::2], iv.events[1::2], strict=False)]
    assert len(spans) >= 2 and spans[1] > spans[0]


def test_bad_settings_are_config_errors():
    env = sim.make("reach")
    with pytest.raises(ConfigError, match="delay"):
        sim.ScriptedIntervener.for_env(env, sim.make_expert(env), delay=-1)
    with pytest.raises(ConfigError, match="max_control"):
        sim.ScriptedIntervener.for_env(env, sim.make_expert(env), min_control=10, max_control=5)
