"""Flow-matching head (as in pi0 / SmolVLA).

Training: x_t = t*eps + (1-t)*a, the network predicts the velocity u = eps - a; t is
drawn from Beta(alpha, beta) skewed towards the noisy end (t=1) or uniformly.
Sampling: Euler steps from t=1 (pure noise) to t=0 (the action chunk).

A head holds no weights: it defines how a clean chunk ``a`` and noise ``eps`` become the
network's input and target, and how to integrate the network back to a chunk. All
tensors are in the normalised action space. Shapes: B rows, H chunk, Da action size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vla.errors import ConfigError

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x (B, H, Da), net_time (B,)) -> prediction (B, H, Da)


@dataclass
class FlowConfig:
    num_steps: int = 10  # Euler steps at sampling time
    time_sampling: str = "beta"  # "beta" (skewed to noise, pi0) or "uniform"
    beta_alpha: float = 1.5
    beta_beta: float = 1.0
    t_min: float = 0.001  # training times lie in [t_min, 1] (pi0: Beta * 0.999 + 0.001)


class FlowHead:
    name = "flow"

    def __init__(self, cfg: FlowConfig):
        if cfg.time_sampling not in ("beta", "uniform"):
            raise ConfigError(f"flow.time_sampling must be 'beta' or 'uniform', got {cfg.time_sampling!r}")
        if cfg.num_steps < 1:
            raise ConfigError(f"flow.num_steps must be >= 1, got {cfg.num_steps}")
        self.cfg = cfg

    def sample_time(self, batch_size: int, device) -> Tensor:
        """Training times t (B,) in [t_min, 1]; t=1 is pure noise."""
        if self.cfg.time_sampling == "beta":
            dist = torch.distributions.Beta(
                torch.tensor(self.cfg.beta_alpha), torch.tensor(self.cfg.beta_beta)
            )
            u = dist.sample((batch_size,))
        else:
            u = torch.rand(batch_size)
        return (u * (1 - self.cfg.t_min) + self.cfg.t_min).to(device)

    def noisy(self, a: Tensor, eps: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Noisy chunk x_t (B, H, Da) and the network's time input (B,) for t (B,) in [0, 1]."""
        tt = t.to(a.dtype)[:, None, None]
        return tt * eps + (1 - tt) * a, t.float()

    def target(self, a: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return eps - a

    def renoise(self, a: Tensor, eps: Tensor, t_start: float) -> Tensor:
        """x at t_start for a clean chunk a: where ``denoise(..., t_start)`` starts."""
        return self.noisy(a, eps, torch.full((a.shape[0],), float(t_start), device=a.device))[0]

    @torch.no_grad()
    def denoise(self, fn: Denoiser, x: Tensor, t_start: float = 1.0) -> Tensor:
        """Euler-integrate dx/dt = v from t_start (x is x_{t_start}) down to 0 in num_steps steps."""
        steps = self.cfg.num_steps
        dt = t_start / steps
        for i in range(steps):
            t = torch.full((x.shape[0],), t_start - i * dt, device=x.device)
            x = x - dt * fn(x, t)
        return x
