"""Cal-QL critic (V-GPS): chunk TD plus a calibrated conservative penalty, language-conditioned.

    loss = TD(Q(s, a), y) + alpha * E_s[ T logsumexp_j(Q(s, a_j) / T) - Q(s, a) ]

The a_j are ``n_actions`` uniform random chunks, chunks of the current policy at s and at
s[t+H], and the recorded chunk. The penalty pushes Q down on actions outside the data;
the calibration of Cal-QL holds the Q-values of the *policy's* chunks at or above the
Monte-Carlo return of the data (``mc_return``) inside the logsumexp, so that the policy's
values are not pushed below a value the data already achieved. Our policies give no
log-density, so this is CQL's variant without importance weights.
V-GPS defaults: 2 members, alpha 5, 4 sampled actions, gamma 0.98, Polyak 5e-3, the
ensemble minimum in the target and at run time; reward -1 per step and 0 at success.
With ``chunk_len=1`` it scores single actions (the first step of a policy's chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from critics.base import ChunkCritic, CriticConfig, next_obs
from vla.errors import ConfigError, DataError
from vla.types import ACTION, Batch, ChunkPolicy


@dataclass
class CalQLConfig(CriticConfig):
    type: str = "calql"
    target_agg: str = "min"
    agg: str = "min"
    alpha: float = 5.0  # weight of the conservative penalty (0: plain TD)
    n_actions: int = 4  # chunks per kind (random, policy at s, policy at s') in the penalty
    temperature: float = 1.0  # of the logsumexp
    calibrate: bool = True  # Cal-QL: hold policy Q-values at or above the MC return (False: CQL)

    def __post_init__(self):
        super().__post_init__()
        if self.alpha < 0 or self.n_actions < 1 or self.temperature <= 0:
            raise ConfigError("critic.alpha must be >= 0, critic.n_actions >= 1, critic.temperature > 0")


class CalQLCritic(ChunkCritic):
    type_name = "calql"
    config_cls = CalQLConfig

    def __init__(self, cfg: CalQLConfig, features: dict, stats: dict, policy: ChunkPolicy | None = None):
        super().__init__(cfg, features, stats, policy)
        if any(k not in stats.get(ACTION, {}) for k in ("min", "max")):
            raise DataError("calql critic: the action stats lack min/max (the range of its random chunks)")
        for name, key in (("action_lo", "min"), ("action_hi", "max")):
            self.register_buffer(name, torch.as_tensor(stats[ACTION][key], dtype=torch.float32))

    def random_chunks(self, batch_size: int, n: int) -> Tensor:
        """Uniform raw chunks (B, n, H, Da) inside the data's action range."""
        u = torch.rand(batch_size, n, self.cfg.chunk_len, self.action_dim, device=self.action_lo.device)
        return self.action_lo + u * (self.action_hi - self.action_lo)

    def loss(self, batch: Batch, policy: ChunkPolicy | None = None) -> tuple[Tensor, dict]:
        self.check_batch(batch)
        cfg = self.cfg
        data = batch[ACTION][:, None]  # (B, 1, H, Da)
        if cfg.alpha <= 0:
            y = self.td_target(batch, policy)  # (B,)
            q_data = self.q(batch, data)[..., 0]
            td = F.mse_loss(q_data, y.expand_as(q_data))
            return td, {"td_loss": td.detach(), "q_data": q_data.mean().detach(), "target": y.mean()}
        if policy is None:
            raise ConfigError("calql critic: the TD target and the penalty need the current policy (policy_path=)")

        B, n = data.shape[0], cfg.n_actions
        current = self.policy_chunks(policy, batch, n)
        # the policy's chunks at s[t+H] serve both the bootstrap and the penalty: one encoding
        following = self.policy_chunks(policy, next_obs(batch), max(n, cfg.n_next))
        y = self.td_target(batch, policy, following[:, : cfg.n_next])  # (B,)
        following = following[:, :n]
        # One encoder pass scores the recorded chunk and all 3n sampled ones.
        chunks = torch.cat([data, self.random_chunks(B, n), current, following], dim=1)
        q_all = self.q(batch, chunks)  # (E, B, 1 + 3n)
        q_data = q_all[..., 0]
        q_rand, q_cur, q_next = q_all[..., 1:].split(n, dim=-1)
        td = F.mse_loss(q_data, y.expand_as(q_data))

        logs = {}
        if cfg.calibrate:
            if "mc_return" not in batch:
                raise DataError("calql critic: the batch lacks 'mc_return' (needed by calibrate=true)")
            bound = batch["mc_return"].float()[None, :, None]  # (1, B, 1)
            logs["calibrated_frac"] = (q_cur < bound).float().mean()
            q_cur, q_next = torch.maximum(q_cur, bound), torch.maximum(q_next, bound)
        T = cfg.temperature
        cat = torch.cat([q_rand, q_cur, q_next, q_data[..., None]], dim=-1)  # (E, B, 3n + 1)
        gap = T * torch.logsumexp(cat / T, dim=-1) - q_data  # (E, B)
        loss = td + cfg.alpha * gap.mean()
        logs.update(
            td_loss=td.detach(),
            cql_gap=gap.mean().detach(),
            q_data=q_data.mean().detach(),
            q_policy=q_all[..., 1 + n : 1 + 2 * n].mean().detach(),
            target=y.mean(),
        )
        return loss, logs
