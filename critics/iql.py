"""IQL critic (the V-GPS alternative): in-sample values, no policy needed to train.

    V(s)    <- expectile_tau of Qbar(s, a) over the data's chunks (asymmetric L2, tau 0.7)
    Q(s, a) <- sum_{k<H} gamma^k r_{t+k} + gamma^H (1 - done) V(s_{t+H})

Q never queries actions outside the data, so no conservative penalty is needed; the
expectile makes V approach the best chunks the data shows. ``value`` is this V(s) (the
policy argument is ignored), so the advantage is Q(s, a) - V(s) without sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from critics.base import ChunkCritic, CriticConfig, aggregate, next_obs
from critics.nets import EnsembleMLP
from vla.errors import ConfigError
from vla.types import ACTION, Batch, ChunkPolicy


@dataclass
class IQLConfig(CriticConfig):
    type: str = "iql"
    target_agg: str = "min"
    agg: str = "min"
    expectile: float = 0.7

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.expectile < 1.0:
            raise ConfigError(f"critic.expectile={self.expectile} must lie in (0, 1)")


def expectile_loss(diff: Tensor, tau: float) -> Tensor:
    """mean |tau - 1(diff < 0)| diff^2."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return (weight * diff**2).mean()


class IQLCritic(ChunkCritic):
    type_name = "iql"
    config_cls = IQLConfig

    def __init__(self, cfg: IQLConfig, features: dict, stats: dict, policy: ChunkPolicy | None = None):
        super().__init__(cfg, features, stats, policy)
        self.value_head = EnsembleMLP(1, self.feature_dim, list(cfg.hidden), 1, cfg.activation)

    def v(self, obs: Batch) -> Tensor:
        """V(s) (B,)."""
        return self.q_scale * self.value_head(self.obs_features(obs))[0, :, 0]

    def value(self, obs: Batch, policy: ChunkPolicy | None = None, n: int = 8) -> Tensor:
        return self.v(obs)

    def loss(self, batch: Batch, policy: ChunkPolicy | None = None) -> tuple[Tensor, dict]:
        self.check_batch(batch)
        data = batch[ACTION][:, None]
        feats = self.obs_features(batch)
        q = self.score(feats, self._chunks(data))[..., 0]  # (E, B)
        v = self.q_scale * self.value_head(feats)[0, :, 0]  # (B,)
        with torch.no_grad():
            q_target = aggregate(self.q_target(batch, data)[..., 0], self.cfg.target_agg, self.cfg.agg_k)
            v_next = self.v(next_obs(batch))
            y = self.backup(batch, v_next)
        v_loss = expectile_loss(q_target - v, self.cfg.expectile)
        q_loss = F.mse_loss(q, y.expand_as(q))
        return q_loss + v_loss, {
            "td_loss": q_loss.detach(),
            "v_loss": v_loss.detach(),
            "q_data": q.mean().detach(),
            "v": v.mean().detach(),
            "target": y.mean(),
        }
