"""ALOE chunk critic: off-policy evaluation of the *current* policy over action chunks.

    y = sum_{k<H} gamma^k r_{t+k} + gamma^H (1 - done) agg_E Qbar(s_{t+H}, a'),   a' ~ pi_current(s_{t+H})

with several draws of a' averaged, the sum and the bootstrap cut at an episode end inside
the chunk, and Polyak target networks. Every member regresses on the same target from
its own initialisation; their spread is what the pessimistic aggregation (mean minus
k * std, or min) reads at run time. V(s) is the mean Q over chunks of the current policy,
and the advantage of a recorded chunk is Q minus V (``ChunkCritic.value``/``advantage``).
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from critics.base import ChunkCritic, CriticConfig
from vla.types import ACTION, Batch, ChunkPolicy


class ALOECritic(ChunkCritic):
    type_name = "aloe"
    config_cls = CriticConfig

    def loss(self, batch: Batch, policy: ChunkPolicy | None = None) -> tuple[Tensor, dict]:
        self.check_batch(batch)
        y = self.td_target(batch, policy)  # (B,)
        q = self.q(batch, batch[ACTION][:, None])[..., 0]  # (E, B)
        loss = F.mse_loss(q, y.expand_as(q))
        return loss, {
            "td_loss": loss.detach(),
            "q_data": q.mean().detach(),
            "target": y.mean(),
            "ensemble_std": q.std(0, unbiased=False).mean().detach(),
        }
