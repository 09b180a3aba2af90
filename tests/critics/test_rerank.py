"""Re-ranking: the critic's favourite wins, infeasible candidates never do, holding when none is feasible."""

import numpy as np
import pytest
import torch
from fakes import FakePolicy

from critics.rerank import Feasibility, RerankConfig, Reranker
from vla.agent import ChunkAgent
from vla.errors import ConfigError


class ListPolicy(FakePolicy):
    """Candidate n is the constant chunk of value n/10 (plus the caller's noise times 0), so indices are known."""

    chunk_len, action_dim = 4, 2

    def __init__(self):
        self.encodes = 0

    def encode(self, obs):
        self.encodes += 1
        return obs["observation.state"].shape[0]

    def sample(self, ctx, n=1, noise=None):
        vals = torch.arange(n, dtype=torch.float32) / 10
        return vals.view(1, n, 1, 1).expand(ctx, n, self.chunk_len, self.action_dim).clone()


class PreferCritic:
    """Q peaks at a target value; two members disagree by a constant."""

    chunk_len, action_dim = 4, 2

    def __init__(self, target):
        self.target = target

    def q(self, obs, chunks):
        score = -(chunks[..., 0, 0] - self.target).abs()  # (B, N)
        return torch.stack([score, score - 0.1])


def obs(b=1):
    return {"observation.state": torch.zeros(b, 3), "task": ["t"] * b}


def test_picks_the_candidate_the_critic_prefers():
    policy = ListPolicy()
    r = Reranker(policy, PreferCritic(0.7), RerankConfig(n=16))
    chunks, decisions = r.choose(obs(2))
    assert torch.allclose(chunks, torch.full((2, 4, 2), 0.7))
    assert decisions[0]["chosen"] == 7 and decisions[0]["feasible"] == 16
    assert decisions[0]["score_spread"] > 0 and decisions[0]["ms"] >= 0
    assert policy.encodes == 1  # one shared encoding for all candidates


def test_infeasible_candidates_are_never_chosen():
    feas = Feasibility(low=np.zeros(2), high=np.full(2, 0.5))
    r = Reranker(ListPolicy(), PreferCritic(0.9), RerankConfig(n=16), feasibility=feas)
    chunk, decision = r.plan(obs(), last_action=None)
    assert np.allclose(chunk, 0.5) and decision["feasible"] == 6
    # the largest step per tick counts from the last executed action
    step = Feasibility(max_step=0.15)
    r = Reranker(ListPolicy(), PreferCritic(0.9), RerankConfig(n=16), feasibility=step)
    chunk, _ = r.plan(obs(), last_action=np.array([0.2, 0.2], np.float32))
    assert np.allclose(chunk, 0.3)


def test_holds_position_when_nothing_is_feasible(caplog):
    feas = Feasibility(low=np.full(2, 5.0), high=np.full(2, 6.0))
    r = Reranker(ListPolicy(), PreferCritic(0.3), RerankConfig(n=4), feasibility=feas)
    last = np.array([0.25, -0.5], np.float32)
    with caplog.at_level("WARNING"):
        chunk, decision = r.plan(obs(), last_action=last)
    assert decision["held"] and decision["chosen"] == -1
    assert np.allclose(chunk, np.tile(last, (4, 1)))
    assert "holding position" in caplog.text


def test_temperature_zero_is_deterministic_and_softmax_samples():
    r = Reranker(ListPolicy(), PreferCritic(0.5), RerankConfig(n=8, selector="softmax", temperature=0.0))
    picks = {r.choose(obs())[1][0]["chosen"] for _ in range(5)}
    assert picks == {5}
    hot = Reranker(ListPolicy(), PreferCritic(0.5), RerankConfig(n=8, selector="softmax", temperature=10.0, seed=1))
    picks = {hot.choose(obs())[1][0]["chosen"] for _ in range(40)}
    assert len(picks) > 2
    hot.reseed(3)
    a = [hot.choose(obs())[1][0]["chosen"] for _ in range(10)]
    hot.reseed(3)
    assert a == [hot.choose(obs())[1][0]["chosen"] for _ in range(10)]


def test_aggregation_and_span_config():
    r = Reranker(ListPolicy(), PreferCritic(0.5), RerankConfig(n=4, aggregate="mean"))
    s_mean = r.scores(obs(), ListPolicy().sample(1, 4))
    r.cfg.aggregate = "min"
    s_min = r.scores(obs(), ListPolicy().sample(1, 4))
    assert torch.all(s_min < s_mean)
    with pytest.raises(ConfigError, match="span"):
        Reranker(ListPolicy(), PreferCritic(0.5), RerankConfig(span="first"))
    with pytest.raises(ConfigError, match="selector"):
        Reranker(ListPolicy(), PreferCritic(0.5), RerankConfig(selector="best"))


def test_chunk_agent_with_reranker_logs_decisions():
    agent = ChunkAgent(ListPolicy(), execute_steps=2, planner=Reranker(ListPolicy(), PreferCritic(0.2)))
    o = {"observation.state": np.zeros(3, np.float32), "task": "t"}
    actions = [agent.act(o) for _ in range(5)]
    assert np.allclose(actions, 0.2)
    assert [d["step"] for d in agent.decisions] == [0, 2, 4]
    assert all(d["chosen"] == 2 for d in agent.decisions)
