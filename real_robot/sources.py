"""Chunk sources the policy server can host (server side: these may import torch).

* ``PlannerSource`` wraps ``vla.agent.ChunkAgent``: its ``plan(obs)`` encodes the
  observation once and samples one chunk (or calls the agent's ``chunk_fn``);
* ``RerankerSource`` wraps ``critics.rerank.Reranker``: N candidates behind one encoding,
  the infeasible dropped (using the robot's last executed goal), the critic's pick kept.
"""

from __future__ import annotations

import logging

import numpy as np

from real_robot.protocol import IMAGE_PREFIX, STATE

log = logging.getLogger(__name__)


def _policy_sizes(policy, state_dim, cameras):
    """The state size and cameras a policy was trained with (checked against the robot at hello):
    given explicitly, or read from the policy's ``features`` ({key: shape}, the ChunkPolicy contract)."""
    features = policy.features
    if state_dim is None and STATE in features:
        state_dim = int(features[STATE][0])
    if cameras is None:
        cameras = [k for k in features if k.startswith(IMAGE_PREFIX)]
    return state_dim, [c for c in cameras if c.startswith(IMAGE_PREFIX)]


class PlannerSource:
    """A ChunkSource from a ChunkAgent (policy + optional ``chunk_fn``)."""

    def __init__(self, agent, name: str = "policy", state_dim: int | None = None,
                 cameras: list[str] | None = None, seed: int | None = None):
        self.agent = agent
        self.chunk_len = int(agent.policy.chunk_len)
        self.action_dim = int(agent.policy.action_dim)
        self.name = name
        self.seed = seed
        # sizes the policy was trained with, checked against the robot at hello
        self.state_dim, self.cameras = _policy_sizes(agent.policy, state_dim, cameras)
        self.execute_steps = int(agent.execute_steps)  # advertised to clients that do not set their own

    def reset(self) -> None:
        self.agent.reset(self.seed)

    def chunk(self, obs: dict, last_action: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(self.agent.plan(obs), dtype=np.float32)  # (H, Da)


class RerankerSource:
    """A ChunkSource from a critic re-ranker (``plan(batch, last_action) -> (chunk, decision)``)."""

    def __init__(self, reranker, device: str = "cpu", name: str = "reranked", state_dim: int | None = None,
                 cameras: list[str] | None = None, seed: int | None = None):
        self.reranker, self.device, self.name, self.seed = reranker, device, name, seed
        self.chunk_len = int(reranker.policy.chunk_len)
        self.action_dim = int(reranker.policy.action_dim)
        self.state_dim, self.cameras = _policy_sizes(reranker.policy, state_dim, cameras)
        self.execute_steps = int(reranker.policy.execute_steps)  # advertised to clients that do not set their own

    def reset(self) -> None:
        if self.seed is not None:
            self.reranker.reseed(self.seed)

    def chunk(self, obs: dict, last_action: np.ndarray | None = None) -> np.ndarray:
        import torch

        from vla.data.batch import obs_to_batch

        with torch.no_grad():
            chunk, decision = self.reranker.plan(obs_to_batch([obs], self.device), last_action)
        log.debug("re-ranking decision: %s", decision)
        return np.asarray(chunk, dtype=np.float32)  # (H, Da)


def from_policy(policy, device: str = "cpu", chunk_fn=None, name: str = "policy", seed: int | None = None,
                **kwargs) -> PlannerSource:
    """Host a ChunkPolicy; ``chunk_fn(batch) -> (B, H, Da)`` replaces plain sampling."""
    from vla.agent import ChunkAgent, execute_steps_for

    agent = ChunkAgent(policy, execute_steps_for(policy), device=device, chunk_fn=chunk_fn, seed=seed)
    return PlannerSource(agent, name=name, seed=seed, **kwargs)


def from_reranker(policy, critic, rerank_cfg=None, feasibility=None, device: str = "cpu",
                  name: str = "reranked", **kwargs) -> RerankerSource:
    """Host best-of-N re-ranking of ``policy`` by ``critic`` (critics.rerank)."""
    from critics.rerank import Reranker

    return RerankerSource(Reranker(policy, critic, rerank_cfg, feasibility), device=device, name=name, **kwargs)
