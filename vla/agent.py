"""Agents act in an env one step at a time; ``ChunkAgent`` runs a chunk policy with a receding horizon."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from vla.data.batch import obs_to_batch
from vla.errors import ConfigError, DataError
from vla.types import ChunkPolicy


@runtime_checkable
class Agent(Protocol):
    def reset(self, seed: int | None = None) -> None: ...

    def act(self, obs: dict) -> np.ndarray:
        """The next raw action (Da,)."""


class ChunkAgent:
    """Execute ``execute_steps`` actions of each sampled chunk of H, then re-plan.

    ``chunk_fn`` may replace plain sampling (a re-ranker, for instance): it maps an
    observation batch to one chunk per row, (B, H, Da).
    """

    def __init__(self, policy: ChunkPolicy, execute_steps: int | None = None, device: str = "cpu",
                 seed: int | None = None, chunk_fn=None):
        self.policy = policy
        self.execute_steps = int(execute_steps or policy.chunk_len)
        if not 1 <= self.execute_steps <= policy.chunk_len:
            raise ConfigError(f"execute_steps must be in [1, {policy.chunk_len}], got {self.execute_steps}")
        self.device = device
        self.chunk_fn = chunk_fn
        self._plan: np.ndarray | None = None
        self._k = 0
        self._gen = torch.Generator(device="cpu")
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self._plan, self._k = None, 0
        if seed is not None:
            self._gen.manual_seed(int(seed))

    @torch.no_grad()
    def plan(self, obs: dict) -> np.ndarray:
        batch = obs_to_batch([obs], self.device)
        if self.chunk_fn is not None:
            return self.chunk_fn(batch)[0].detach().cpu().numpy()
        noise = torch.randn(1, 1, self.policy.chunk_len, self.policy.action_dim, generator=self._gen)
        ctx = self.policy.encode(batch)
        return self.policy.sample(ctx, n=1, noise=noise.to(self.device))[0, 0].cpu().numpy()

    def act(self, obs: dict) -> np.ndarray:
        if self._plan is None or self._k >= self.execute_steps:
            self._plan, self._k = self.plan(obs), 0
        action = self._plan[self._k]
        self._k += 1
        if not np.isfinite(action).all():
            raise DataError("policy produced a NaN or infinite action")
        return action.astype(np.float32)
