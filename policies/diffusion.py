"""Diffusion head (as in Diffusion Policy): epsilon prediction with ``diffusers`` schedulers.

Training noises with ``DDPMScheduler`` [100 steps, squaredcos_cap_v2]; sampling runs
``DDIMScheduler`` [10 steps, eta 0, so deterministic given the initial noise].

Time in [0, 1], as for the flow head, so that callers (AWM, APO) treat both heads alike:

    timestep k = min(floor(t * num_train_timesteps), num_train_timesteps - 1)     (t=1: pure noise)
    network time input = k / (num_train_timesteps - 1)                          (in [0, 1])

A head holds no weights (see policies/flow.py). Shapes: B rows, H chunk, Da action size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor

from policies.flow import Denoiser
from vla.errors import ConfigError


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    num_inference_steps: int = 10  # DDIM steps at sampling time
    # "leading" (diffusers' default, Diffusion Policy's behaviour) runs k = 90, 80, ..., 0.
    # "trailing" would start at k = 99, where abar ~ 2e-7 and the x0 implied by an epsilon
    # prediction amplifies its error ~2000x: unusable with epsilon prediction.
    timestep_spacing: str = "leading"
    # Clamp DDIM's x0 estimate (normalised units: mean/std, so +-5 std keeps all sane data).
    clip_sample: bool = True
    clip_sample_range: float = 5.0


class DiffusionHead:
    name = "diffusion"

    def __init__(self, cfg: DiffusionConfig):
        if not 1 <= cfg.num_inference_steps <= cfg.num_train_timesteps:
            raise ConfigError(
                f"diffusion.num_inference_steps must be in [1, {cfg.num_train_timesteps}], "
                f"got {cfg.num_inference_steps}"
            )
        self.cfg = cfg
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_schedule=cfg.beta_schedule,
            prediction_type="epsilon",
            clip_sample=cfg.clip_sample,
            clip_sample_range=cfg.clip_sample_range,
        )
        self.sample_scheduler = DDIMScheduler.from_config(
            self.train_scheduler.config, timestep_spacing=cfg.timestep_spacing
        )
        self.sample_scheduler.set_timesteps(cfg.num_inference_steps)
        self._alphas = self.train_scheduler.alphas_cumprod  # (T,) float32 on the CPU

    def timestep(self, t: Tensor) -> Tensor:
        """The documented map from t in [0, 1] (B,) to integer DDPM timesteps (B,)."""
        T = self.cfg.num_train_timesteps
        return (t.float() * T).floor().long().clamp(0, T - 1)

    def net_time(self, k: Tensor) -> Tensor:
        return k.float() / (self.cfg.num_train_timesteps - 1)

    def sample_time(self, batch_size: int, device) -> Tensor:
        """Uniform t (B,): uniform over the integer timesteps, as DDPM training does."""
        return torch.rand(batch_size, device=device)

    def noisy(self, a: Tensor, eps: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """x_k = sqrt(abar_k) a + sqrt(1 - abar_k) eps (B, H, Da) and the network time (B,)."""
        k = self.timestep(t).to(a.device)
        abar = self._alphas.to(a.device)[k].to(a.dtype)[:, None, None]
        return abar.sqrt() * a + (1 - abar).sqrt() * eps, self.net_time(k)

    def target(self, a: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return eps

    def _timesteps(self, t_start: float) -> list[int]:
        k_start = int(self.timestep(torch.tensor([t_start]))[0])
        return [int(k) for k in self.sample_scheduler.timesteps if k <= k_start]

    def renoise(self, a: Tensor, eps: Tensor, t_start: float) -> Tensor:
        """x at the first DDIM step that ``denoise(..., t_start)`` runs (a itself if none runs)."""
        ks = self._timesteps(t_start)
        if not ks:
            return a
        k = torch.full((a.shape[0],), ks[0], dtype=torch.long)
        abar = self._alphas[k].to(a.device, a.dtype)[:, None, None]
        return abar.sqrt() * a + (1 - abar).sqrt() * eps

    @torch.no_grad()
    def denoise(self, fn: Denoiser, x: Tensor, t_start: float = 1.0) -> Tensor:
        """DDIM from the step matching t_start (1.0: pure noise) to the clean chunk."""
        for k in self._timesteps(t_start):
            kk = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
            eps_hat = fn(x, self.net_time(kk))
            x = self.sample_scheduler.step(eps_hat, k, x).prev_sample
        return x
