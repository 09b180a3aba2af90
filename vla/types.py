"""Names and interfaces that cross package borders (see DESIGN.md).

Shapes: ``B`` batch, ``N`` candidates, ``H`` chunk length, ``Da`` action size,
``Ds`` state size, ``E`` ensemble size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from vla.errors import ConfigError

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
    """A generative policy over action chunks (our flow and diffusion VLA, the LeRobot adapter).

    Everything code in another package calls on a policy is declared here, so that every
    implementation is held to it (``tests/contract`` runs each through every command) and no
    caller needs to probe with ``getattr``.
    """

    chunk_len: int  # H: steps per sampled chunk, from the current step on
    action_dim: int  # Da
    execute_steps: int  # actions an agent executes per chunk before re-planning, unless told otherwise
    generative: bool  # sample() honours noise, init and t_start, and loss() takes noise and t (see below)

    @property
    def features(self) -> dict[str, tuple[int, ...]]:
        """What the policy reads and writes, {key: shape}: ``observation.state`` (Ds,), each camera
        ``observation.images.<cam>`` (3, H, W), and ``action`` (Da,)."""

    def encode(self, obs: Batch) -> Context:
        """Prefix features, computed once per observation."""

    def sample(self, ctx: Context, n: int = 1, noise: Tensor | None = None, init: Tensor | None = None,
               t_start: float = 1.0) -> Tensor:
        """Candidate chunks (B, N, H, Da) in the *unnormalised* action space.

        noise (B, N, H, Da) fixes the draw. With ``t_start`` < 1 the denoising starts part-way:
        from ``init`` (B, N, H, Da, raw actions) noised to ``t_start`` (a dual system refining a
        chosen chunk), or, without ``init``, from the normalised zero chunk noised to ``t_start``
        (a candidate drawn at a lower noise level). t = 1 is pure noise for every head.
        """

    def loss(
        self,
        batch: Batch,
        reduction: str = "mean",
        noise: Tensor | None = None,
        t: Tensor | None = None,
    ) -> Tensor:
        """Generative loss; (B,) with reduction='none'."""

    def sample_time(self, batch_size: int, device: torch.device | str) -> Tensor:
        """t (B,) in [0, 1] drawn as the policy's own training draws it (AWM/APO reweight that loss)."""

    def check_compatible(self, features: dict, where: str = "the dataset") -> None:
        """ShapeError naming the feature and both shapes where ``features`` ({key: shape} of a dataset,
        env or robot) lacks or sizes differently something the policy reads or writes."""

    def save_pretrained(self, directory: str | Path) -> Any:
        """A checkpoint directory that ``policies.load_policy`` opens again."""


@runtime_checkable
class Critic(Protocol):
    chunk_len: int  # the first chunk_len steps of a policy's chunk are scored
    action_dim: int

    def q(self, obs: Batch, chunks: Tensor) -> Tensor:
        """chunks (B, N, H>=chunk_len, Da) -> values (E, B, N)."""

    def loss(self, batch: Batch, policy: ChunkPolicy | None = None) -> tuple[Tensor, dict]: ...


@runtime_checkable
class Intervener(Protocol):
    def act(self, obs: dict, proposed: np.ndarray) -> tuple[np.ndarray, bool]:
        """Executed action and whether the intervener took over."""


WITHOUT_GENERATIVE_HEAD = ("it serves evaluate.py and deploy.py without a critic, and finetune.py algo=bc, "
                           "filtered_bc or hg_dagger (LeRobot types with one: diffusion, pi0, pi05, smolvla)")


def require_generative(policy: ChunkPolicy, what: str) -> None:
    """A one-line ConfigError, before any rollout or training step, when ``what`` (re-ranking, the
    dual system, AWM, APO) is given a policy that cannot sample from caller-given noise."""
    if not policy.generative:
        raise ConfigError(f"{what} needs a policy that samples from caller-given noise; {policy} has no "
                          f"generative head: {WITHOUT_GENERATIVE_HEAD}")


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
