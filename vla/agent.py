"""Agents act in an env one step at a time; ``ChunkAgent`` runs a chunk policy with a receding horizon."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from vla.data.batch import obs_to_batch
from vla.errors import ConfigError, DataError
from vla.types import ChunkPolicy


def execute_steps_for(policy: ChunkPolicy, override: int | None = None) -> int:
    """Actions executed per chunk: ``override``, else the policy's own ``execute_steps``."""
    return int(override or policy.execute_steps)


def check_env(policy: ChunkPolicy, env, where: str) -> None:
    """ShapeError naming the feature where a Gymnasium env's observation or action disagrees with
    the policy (before any episode runs)."""
    features = {k: s.shape for k, s in env.observation_space.spaces.items() if getattr(s, "shape", None)}
    features["action"] = env.action_space.shape
    policy.check_compatible(features, where=where)


@runtime_checkable
class Agent(Protocol):
    def reset(self, seed: int | None = None) -> None: ...

    def act(self, obs: dict) -> np.ndarray:
        """The next raw action (Da,)."""


class ChunkAgent:
    """Execute ``execute_steps`` actions of each planned chunk of H, then re-plan.

    How a chunk is planned: by default one sample of the policy; a ``planner`` (for
    example ``critics.rerank.Reranker``: ``plan(batch, last_action) -> (chunk (H, Da), log)``)
    or a ``chunk_fn(batch) -> (B, H, Da)`` replaces that. Each plan's log is kept in
    ``decisions``. With ``temporal_ensemble=m`` the agent re-plans every step and executes
    the exponentially weighted mean of all chunks that cover the step (weights exp(-m*i),
    i = 0 for the oldest, as in ACT).
    """

    def __init__(self, policy: ChunkPolicy, execute_steps: int | None = None, device: str = "cpu",
                 seed: int | None = None, chunk_fn=None, planner=None, temporal_ensemble: float | None = None):
        self.policy = policy
        self.execute_steps = int(execute_steps or policy.chunk_len)
        if not 1 <= self.execute_steps <= policy.chunk_len:
            raise ConfigError(f"execute_steps must be in [1, {policy.chunk_len}], got {self.execute_steps}")
        if chunk_fn is not None and planner is not None:
            raise ConfigError("give a planner or a chunk_fn, not both")
        self.device = device
        self.chunk_fn = chunk_fn
        self.planner = planner
        self.temporal_ensemble = temporal_ensemble
        self._gen = torch.Generator(device="cpu")
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self._plan: np.ndarray | None = None
        self._k = 0
        self._t = 0
        self._chunks: list[tuple[int, np.ndarray]] = []  # (start step, chunk) for temporal ensembling
        self.last_action: np.ndarray | None = None
        self.decisions: list[dict] = []
        if seed is not None:
            self._gen.manual_seed(int(seed))
            if self.planner is not None and hasattr(self.planner, "reseed"):
                self.planner.reseed(seed)

    @torch.no_grad()
    def plan(self, obs: dict) -> np.ndarray:
        """A fresh chunk (H, Da) for one observation."""
        batch = obs_to_batch([obs], self.device)
        info: dict = {}
        if self.planner is not None:
            chunk, info = self.planner.plan(batch, self.last_action)
        elif self.chunk_fn is not None:
            chunk = self.chunk_fn(batch)[0].detach().cpu().numpy()
        else:
            ctx = self.policy.encode(batch)
            noise = None  # a policy without a generative head samples deterministically
            if self.policy.generative:
                noise = torch.randn(1, 1, self.policy.chunk_len, self.policy.action_dim, generator=self._gen)
                noise = noise.to(self.device)
            chunk = self.policy.sample(ctx, n=1, noise=noise)[0, 0].cpu().numpy()
        self.decisions.append({"step": self._t, **info})
        return np.asarray(chunk, dtype=np.float32)

    def act(self, obs: dict) -> np.ndarray:
        if self.temporal_ensemble is not None:
            action = self._ensembled(obs)
        else:
            if self._plan is None or self._k >= self.execute_steps:
                self._plan, self._k = self.plan(obs), 0
            action = self._plan[self._k]
            self._k += 1
        if not np.isfinite(action).all():
            raise DataError("policy produced a NaN or infinite action")
        self._t += 1
        self.last_action = action.astype(np.float32)
        return self.last_action

    def _ensembled(self, obs: dict) -> np.ndarray:
        H = self.policy.chunk_len
        self._chunks.append((self._t, self.plan(obs)))
        self._chunks = [(s, c) for s, c in self._chunks if self._t - s < H]
        preds = np.stack([c[self._t - s] for s, c in self._chunks])  # oldest first
        w = np.exp(-float(self.temporal_ensemble) * np.arange(len(preds)))
        return (w[:, None] * preds).sum(0) / w.sum()
