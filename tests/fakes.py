"""A base for hand-written test policies: the parts of the ChunkPolicy contract (vla/types.py) that a
test of something else rarely cares about, with honest defaults."""

from __future__ import annotations

import torch

from vla.errors import ShapeError


class FakePolicy:
    chunk_len: int
    action_dim: int
    generative = True

    @property
    def execute_steps(self) -> int:
        return self.chunk_len

    @property
    def features(self) -> dict[str, tuple[int, ...]]:
        return {"action": (self.action_dim,)}

    def sample_time(self, batch_size: int, device) -> torch.Tensor:
        return torch.rand(batch_size, device=device)

    def check_compatible(self, features: dict, where: str = "the dataset") -> None:
        act = features.get("action")
        if act is not None and tuple(act) != (self.action_dim,):
            raise ShapeError(f"action: the policy makes ({self.action_dim},), {where} has {tuple(act)}")

    def save_pretrained(self, directory) -> None:
        raise NotImplementedError("a test policy is not saved")
