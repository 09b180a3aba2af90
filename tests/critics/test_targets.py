"""The chunk TD target, the ensemble aggregation and the calibration returns, on hand-made numbers."""

import numpy as np
import pytest
import torch
from chain import Chain

from critics import aggregate, build_critic, chunk_td_target
from critics.base import calibration_returns, next_obs
from vla.errors import ConfigError, ShapeError

G = 0.9


def test_chunk_target_sums_discounted_rewards_and_bootstraps_with_gamma_h():
    r = torch.tensor([[-1.0, -1.0, -1.0]])
    y = chunk_td_target(r, torch.zeros(1, 3, dtype=torch.bool), torch.tensor([False]), torch.tensor([-5.0]), G)
    assert y.item() == pytest.approx(-1 - G - G**2 + G**3 * -5.0)


def test_success_inside_the_chunk_cuts_sum_and_bootstrap():
    # the episode succeeds at the chunk's 2nd step: the 3rd step is padding (reward 0)
    r = torch.tensor([[-1.0, 0.0, 0.0]])
    pad = torch.tensor([[False, False, True]])
    y = chunk_td_target(r, pad, torch.tensor([True]), torch.tensor([-100.0]), G)
    assert y.item() == pytest.approx(-1.0)


def test_time_out_inside_the_chunk_bootstraps_after_the_steps_taken():
    r = torch.tensor([[-1.0, -1.0, 0.0, 0.0]])
    pad = torch.tensor([[False, False, True, True]])
    y = chunk_td_target(r, pad, torch.tensor([False]), torch.tensor([-10.0]), G)
    assert y.item() == pytest.approx(-1 - G + G**2 * -10.0)


class FixedPolicy:
    """Always proposes the same chunk: the bootstrap is then known exactly."""

    def __init__(self, chunk):
        self.chunk = torch.as_tensor(chunk, dtype=torch.float32)
        self.chunk_len, self.action_dim = self.chunk.shape

    def encode(self, obs):
        return len(obs["observation.state"])

    def sample(self, ctx, n=1, noise=None):
        return self.chunk.expand(ctx, n, *self.chunk.shape).clone()


def _critic(H, **kw):
    mdp = Chain(gamma=G)
    cfg = {"type": "aloe", "chunk_len": H, "gamma": G, "hidden": [16], "encoder": {"dim": 8}, **kw}
    return mdp, build_critic(cfg, mdp.features(), mdp.stats())


def test_critic_td_target_when_the_episode_ends_inside_the_chunk():
    torch.manual_seed(0)
    H = 3
    mdp, critic = _critic(H, n_next=2, ensemble=3, target_agg="min")
    batch = mdp.random_batch(64, H, np.random.default_rng(1))
    # make the two kinds of episode end explicit: success (terminal) and time-out (bootstrap)
    batch["next.done"][:4] = True
    batch["action_is_pad"][:4] = torch.tensor([False, True, True])
    batch["next.reward"][:4] = torch.tensor([-1.0, 0.0, 0.0])
    batch["episode_success"][:4] = torch.tensor([True, True, False, False])
    policy = FixedPolicy([[1.0]] * H)
    y = critic.td_target(batch, policy)

    v_next = critic.q_target(next_obs(batch), policy.sample(len(batch["task"]), 2)).min(0).values.mean(-1)
    valid = ~batch["action_is_pad"]
    ret = (batch["next.reward"] * valid * G ** torch.arange(H)).sum(1)
    terminal = batch["next.done"] & batch["episode_success"]
    expected = ret + G ** valid.sum(1) * (~terminal) * v_next
    torch.testing.assert_close(y, expected)
    assert y[0].item() == pytest.approx(-1.0) and y[1].item() == pytest.approx(-1.0)  # successes: no bootstrap
    assert y[2].item() == pytest.approx(-1.0 + G * v_next[2].item(), abs=1e-5)  # time-out: gamma^1 bootstrap


def test_time_outs_are_terminal_when_asked():
    torch.manual_seed(0)
    mdp, critic = _critic(2, timeout_bootstrap=False)
    batch = mdp.random_batch(8, 2, np.random.default_rng(0))
    batch["next.done"][:] = True
    batch["episode_success"][:] = False
    assert critic.terminal(batch).all()


def test_pessimistic_aggregation_is_below_the_mean_when_members_disagree():
    q = torch.tensor([[1.0, 2.0], [3.0, 2.0]])  # (E=2, N=2): members disagree on the first candidate only
    assert aggregate(q, "mean_std", 1.0)[0] < aggregate(q, "mean")[0]
    assert aggregate(q, "min")[0] < aggregate(q, "mean")[0]
    assert aggregate(q, "mean_std", 1.0)[1] == aggregate(q, "mean")[1] == 2.0
    with pytest.raises(ConfigError, match="aggregation"):
        aggregate(q, "median")


def test_critic_aggregation_is_pessimistic_over_its_members():
    torch.manual_seed(0)
    mdp, critic = _critic(1, ensemble=4)
    obs = {"observation.state": mdp.one_hot([0, 1, 2]), "task": ["walk"] * 3}
    q = critic.q(obs, torch.ones(3, 5, 1, 1))
    assert q.shape == (4, 3, 5)
    assert (q.std(0) > 0).all()  # independent initialisations disagree
    assert (critic.aggregate(q) < q.mean(0)).all()


def test_calibration_returns_follow_the_backup():
    # episode 0 succeeds at its 3rd step; episode 1 times out after 2 steps (failed)
    rewards = np.array([-1.0, -1.0, 0.0, -1.0, -1.0])
    episode = np.array([0, 0, 0, 1, 1])
    success = np.array([True, True, True, False, False])
    mc = calibration_returns(rewards, episode, success, G, timeout_bootstrap=True)
    np.testing.assert_allclose(mc[:3], [-1 - G, -1, 0], rtol=1e-6)
    np.testing.assert_allclose(mc[3:], [-1 / (1 - G)] * 2, rtol=1e-6)  # Cal-QL's value of a failure
    finite = calibration_returns(rewards, episode, success, G, timeout_bootstrap=False)
    np.testing.assert_allclose(finite[3:], [-1 - G, -1], rtol=1e-6)


def test_bad_inputs_give_one_clear_error():
    mdp, critic = _critic(2)
    obs = {"observation.state": mdp.one_hot([0]), "task": ["walk"]}
    with pytest.raises(ShapeError, match="chunks must be"):
        critic.q(obs, torch.ones(1, 1, 1, 1))  # chunk shorter than H
    with pytest.raises(ShapeError, match="observation.state"):
        critic.q({"observation.state": torch.ones(1, 3), "task": ["walk"]}, torch.ones(1, 1, 2, 1))
    with pytest.raises(ConfigError, match="unknown config key critic.alpah"):
        build_critic({"type": "calql", "alpah": 1.0}, mdp.features(), mdp.stats())
    with pytest.raises(ConfigError, match="critic.type"):
        build_critic({"type": "sarsa"}, mdp.features(), mdp.stats())
    with pytest.raises(ConfigError, match="needs the current policy"):
        critic.loss(mdp.random_batch(4, 2, np.random.default_rng(0)), None)
    with pytest.raises(ShapeError, match="chunk_len=2"):
        critic.loss(mdp.random_batch(4, 3, np.random.default_rng(0)), FixedPolicy([[1.0]] * 2))
