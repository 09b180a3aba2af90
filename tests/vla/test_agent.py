"""ChunkAgent: receding horizon and temporal ensembling."""

import numpy as np
import pytest
import torch
from fakes import FakePolicy

from vla.agent import ChunkAgent
from vla.errors import ConfigError, DataError


class CountingPolicy(FakePolicy):
    """Each plan is the chunk [k, k+1, ...] offset by 100 * (number of plans so far)."""

    chunk_len, action_dim = 4, 1

    def __init__(self, nan=False):
        self.plans = 0
        self.nan = nan

    def encode(self, obs):
        return obs

    def sample(self, ctx, n=1, noise=None):
        base = 100.0 * self.plans + torch.arange(self.chunk_len, dtype=torch.float32)
        self.plans += 1
        out = base.view(1, 1, -1, 1).expand(1, n, -1, 1).clone()
        if self.nan:
            out[..., 1, 0] = float("nan")
        return out


OBS = {"observation.state": np.zeros(2, np.float32), "task": "t"}


def test_receding_horizon_replans_every_k_steps():
    agent = ChunkAgent(CountingPolicy(), execute_steps=3)
    acts = [float(agent.act(OBS)[0]) for _ in range(7)]
    assert acts == [0, 1, 2, 100, 101, 102, 200]
    agent.reset()
    assert float(agent.act(OBS)[0]) == 300


def test_temporal_ensembling_averages_overlapping_chunks():
    agent = ChunkAgent(CountingPolicy(), temporal_ensemble=0.0)  # equal weights
    a0 = agent.act(OBS)[0]
    a1 = agent.act(OBS)[0]
    assert a0 == 0
    assert a1 == pytest.approx((1 + 100) / 2)  # plan 0 step 1, plan 1 step 0


def test_bad_settings_and_nan_actions():
    with pytest.raises(ConfigError, match="execute_steps"):
        ChunkAgent(CountingPolicy(), execute_steps=9)
    agent = ChunkAgent(CountingPolicy(nan=True), execute_steps=4)
    agent.act(OBS)
    with pytest.raises(DataError, match="NaN"):
        agent.act(OBS)
