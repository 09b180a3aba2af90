"""Hosting a policy and a critic re-ranker: the server passes the robot's last executed goal to
the re-ranker, whose feasibility filter then keeps the arm's next step small."""

from __future__ import annotations

import numpy as np
import torch
from fakes import FakePolicy
from websockets.sync.client import connect

from critics.rerank import Feasibility, RerankConfig
from real_robot.protocol import decode, encode, parse_chunk
from real_robot.server import PolicyServer
from real_robot.sources import from_policy, from_reranker


class ListPolicy(FakePolicy):
    """Candidate n is the constant chunk n/10, so the choice is readable from the chunk."""

    chunk_len, action_dim = 4, 2

    def encode(self, obs):
        return obs["observation.state"].shape[0]

    def sample(self, ctx, n=1, noise=None):
        vals = torch.arange(n, dtype=torch.float32) / 10
        return vals.view(1, n, 1, 1).expand(ctx, n, self.chunk_len, self.action_dim).clone()


class PreferCritic:
    chunk_len, action_dim = 4, 2

    def q(self, obs, chunks):
        score = -(chunks[..., 0, 0] - 0.9).abs()  # (B, N): the critic likes 0.9
        return torch.stack([score, score - 0.1])


ROBOT = {"state_dim": 3, "action_dim": 2, "cameras": {}, "robot_type": "fake", "fps": 30}


def ask(conn, step, last_action=None):
    extra = {} if last_action is None else {"last_action": np.asarray(last_action, np.float32)}
    conn.send(encode("obs", id=step + 1, step=step, obs={"observation.state": np.zeros(3, np.float32),
                                                         "task": "t"}, **extra))
    return parse_chunk(decode(conn.recv(timeout=5)), 4, 2)[2]


def test_reranker_gets_the_last_executed_goal():
    source = from_reranker(ListPolicy(), PreferCritic(), RerankConfig(n=10), Feasibility(max_step=0.25),
                           name="vgps", state_dim=3)
    with PolicyServer(source, port=0) as srv, connect(srv.url, proxy=None, compression=None) as c:
        c.send(encode("hello", robot=ROBOT))
        welcome = decode(c.recv(timeout=5))
        assert welcome["policy"] == {"chunk_len": 4, "action_dim": 2, "state_dim": 3, "cameras": [], "name": "vgps",
                                     "execute_steps": 4}
        np.testing.assert_allclose(ask(c, 0), 0.9)  # no last goal yet: the critic's favourite
        np.testing.assert_allclose(ask(c, 1, last_action=[0.3, 0.3]), 0.5)  # the closest feasible to it
        c.send(encode("obs", id=9, step=2, obs={"observation.state": np.zeros(3, np.float32), "task": "t"},
                      last_action=np.array([np.nan, 0], np.float32)))
        assert "last_action" in decode(c.recv(timeout=5))["reason"]


def test_policy_source_samples_one_chunk():
    source = from_policy(ListPolicy(), name="flow", seed=0, state_dim=3)
    with PolicyServer(source, port=0) as srv, connect(srv.url, proxy=None, compression=None) as c:
        c.send(encode("hello", robot=ROBOT))
        assert decode(c.recv(timeout=5))["policy"]["name"] == "flow"
        np.testing.assert_allclose(ask(c, 0), 0.0)  # n=1: the first (and only) candidate
