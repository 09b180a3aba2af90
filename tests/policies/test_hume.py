"""Hume dual system: stepped mode reproducible by seed, System 1 re-plans more often, real time survives a slow System 2."""

import time

import numpy as np
import pytest
import torch

from policies import build_policy
from policies.hume import DualSystemAgent, DualSystemConfig
from vla.errors import ConfigError

FEATURES = {"observation.state": (3,), "action": (2,)}
STATS = {"observation.state": {"mean": [0.0] * 3, "std": [1.0] * 3, "min": [-1.0] * 3, "max": [1.0] * 3},
         "action": {"mean": [0.5, -0.5], "std": [2.0, 2.0], "min": [-3.0] * 2, "max": [3.0] * 2}}
TINY = {"d_model": 32, "n_heads": 2, "expert_layers": 1, "prefix_layers": 0, "state_hidden": 32,
        "text": {"type": "bytes", "layers": 0}}
OBS = {"observation.state": np.array([0.1, 0.2, 0.3], np.float32), "task": "reach the red target"}


def policies(h2=8, h1=4):
    torch.manual_seed(0)
    s2 = build_policy({"head": "flow", "chunk_len": h2, "model": TINY, "flow": {"num_steps": 3}}, FEATURES, STATS)
    s1 = build_policy({"head": "flow", "chunk_len": h1, "model": TINY, "flow": {"num_steps": 2}}, FEATURES, STATS)
    return s2.eval(), s1.eval()


class FirstActionCritic:
    """Prefers chunks whose first action is small; optionally slow (a System 2 slower than control)."""

    chunk_len, action_dim = 8, 2

    def __init__(self, delay=0.0):
        self.delay = delay

    def q(self, obs, chunks):
        time.sleep(self.delay)
        score = -chunks[:, :, 0].abs().sum(-1)
        return torch.stack([score, score + 0.01])


def run(agent, steps):
    return np.stack([agent.act(OBS) for _ in range(steps)])


def test_stepped_mode_is_reproducible_by_seed():
    s2, s1 = policies()
    cfg = DualSystemConfig(n=4, s2_every=8, s1_every=2)
    agent = DualSystemAgent(s2, FirstActionCritic(), s1, cfg)
    agent.reset(seed=3)
    a = run(agent, 12)
    agent.reset(seed=3)
    b = run(agent, 12)
    agent.reset(seed=4)
    c = run(agent, 12)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert a.shape == (12, 2) and np.isfinite(a).all()
    # System 1 re-plans every 2 steps, System 2 every 8
    assert agent.s1_plans == 6 and agent.s2_plans == 2
    s2_log = [d for d in agent.decisions if d["system"] == 2]
    assert all(0.9 <= d["t_start"] <= 1.0 and 0 <= d["chosen"] < 4 for d in s2_log)


def test_system1_starts_from_the_chosen_chunk():
    s2, s1 = policies()
    agent = DualSystemAgent(s2, FirstActionCritic(), s1, DualSystemConfig(n=3, s1_t_start=1e-6))
    agent.reset(seed=0)
    agent.act(OBS)
    _, chosen = agent._plan2
    # with (almost) no noise added, System 1 returns the System 2 slice it was given
    assert np.allclose(agent._plan1, chosen[:4], atol=1e-3)


def test_realtime_mode_survives_a_slow_system2():
    s2, s1 = policies()
    cfg = DualSystemConfig(n=2, s2_every=4, s1_every=1, mode="realtime")
    agent = DualSystemAgent(s2, FirstActionCritic(delay=0.15), s1, cfg)
    try:
        agent.reset(seed=0)
        actions = []
        for _ in range(30):  # a 100 Hz control loop, System 2 takes 150 ms per plan
            actions.append(agent.act(OBS))
            time.sleep(0.01)
        # every plan so far arrived too late (older than its chunk); a pause lets System 2
        # catch up with the newest observation, whose plan is then refined
        time.sleep(0.6)
        for _ in range(5):
            actions.append(agent.act(OBS))
    finally:
        agent.close()
    assert np.isfinite(np.stack(actions)).all() and len(actions) == 35
    s1 = [d for d in agent.decisions if d["system"] == 1]
    assert len(s1) == 35
    assert s1[0]["stale"]  # no System 2 plan yet: System 1 went on from noise
    assert agent.s2_plans >= 1 and any(not d["stale"] for d in s1)


def test_bad_config():
    s2, s1 = policies()
    with pytest.raises(ConfigError, match="must not exceed"):
        DualSystemAgent(s1, FirstActionCritic(), s2)
    with pytest.raises(ConfigError, match="s1_every"):
        DualSystemAgent(s2, FirstActionCritic(), s1, DualSystemConfig(s1_every=9))
