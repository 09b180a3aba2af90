"""Names and interfaces that cross package borders (see DESIGN.md).

Shapes: ``B`` batch, ``N`` candidates, ``H`` chunk length, ``Da`` action size,
``Ds`` state size, ``E`` ensemble size.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

# --- dataset / observation keys (LeRobot naming) ---------------------------------
STATE = "observation.state"
IMAGE_PREFIX = "observation.images."
TASK = "task"
ACTION = "action"
POLICY_ACTION = "policy_action"
INTERVENTION = "intervention"
REWARD = "next.reward"
SUCCESS = "next.success"
DONE = "next.done"

# Episode sources recorded in the episode metadata.
SOURCE_DEMO = "demo"
SOURCE_INTERVENTION = "intervention"
SOURCE_POLICY_PREFIX = "policy:"

# A batch is a dict of tensors (and a list of task strings under ``task``).
Batch = dict[str, Any]
Context = Any


def image_keys(keys) -> list[str]:
    """The camera keys among ``keys``, sorted so that every component agrees on the order."""
    return sorted(k for k in keys if k.startswith(IMAGE_PREFIX))


def is_valid_source(source: str) -> bool:
    return source in (SOURCE_DEMO, SOURCE_INTERVENTION) or (
        source.startswith(SOURCE_POLICY_PREFIX) and len(source) > len(SOURCE_POLICY_PREFIX)
    )


@runtime_checkable
class ChunkPolicy(Protocol):
    """A generative policy over action chunks (flow, diffusion, LeRobot adapter, dual system)."""

    chunk_len: int
    action_dim: int

    def encode(self, obs: Batch) -> Context:
        """Prefix features, computed once per observation."""

    def sample(self, ctx: Context, n: int = 1, noise: Tensor | None = None) -> Tensor:
        """Candidate chunks (B, N, H, Da) in the *unnormalised* action space."""

    def loss(
        self,
        batch: Batch,
        reduction: str = "mean",
        noise: Tensor | None = None,
        t: Tensor | None = None,
    ) -> Tensor:
        """Generative loss; (B,) with reduction='none'."""


@runtime_checkable
class Critic(Protocol):
    def q(self, obs: Batch, chunks: Tensor) -> Tensor:
        """chunks (B, N, H, Da) -> values (E, B, N)."""

    def loss(self, batch: Batch, policy: ChunkPolicy | None = None) -> tuple[Tensor, dict]: ...


@runtime_checkable
class Intervener(Protocol):
    def act(self, obs: dict, proposed: np.ndarray) -> tuple[np.ndarray, bool]:
        """Executed action and whether the intervener took over."""


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
