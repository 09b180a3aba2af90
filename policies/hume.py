"""Hume's dual system: a value-guided System 2 that deliberates slowly, a small System 1 that refines fast.

System 2 (the VLA) samples N candidate chunks, each with its own start time in
``s2_t_start`` and noise scale in ``s2_noise_scale`` (the variety Hume relies on),
scores them with a critic (the value-query head, or any ``Critic``) and keeps the best;
it re-plans every ``s2_every`` steps. System 1 (a small flow policy, chunk H1 <= H2)
takes the slice of the chosen chunk that starts at the current step *as its starting
point*, noised to the partial time ``s1_t_start`` instead of pure noise, integrates
to 0 and re-plans every ``s1_every`` steps (more often than System 2).

Two run modes:
- ``stepped``: System 2 runs inline when due; deterministic for a seed (simulation, tests).
- ``realtime``: System 2 runs in a background thread on the newest observation while
  System 1 keeps the control loop; a System 2 plan older than its chunk (stale) is
  not refined: System 1 then samples from pure noise and the decision says ``stale``.

Shapes: N candidates, H2 System 2 chunk, H1 System 1 chunk, Da action size, E ensemble.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from critics.base import aggregate as aggregate_ensemble
from vla.data.batch import obs_to_batch
from vla.errors import ConfigError, DataError, ShapeError
from vla.types import ChunkPolicy, Critic, require_generative

log = logging.getLogger(__name__)


@dataclass
class DualSystemConfig:
    n: int = 5  # System 2 candidates
    s2_t_start: tuple[float, float] = (0.9, 1.0)  # per-candidate start time range
    s2_noise_scale: tuple[float, float] = (0.9, 1.1)  # per-candidate noise scale range
    s2_every: int = 8  # steps between System 2 plans (stepped mode)
    s1_every: int = 2  # steps between System 1 plans
    s1_t_start: float = 0.2  # partial noise level System 1 starts from (pick_place, 50 seeds: 0.2 -> 14%, 0.5 -> 8%, 1.0 -> 2%)
    aggregate: str = "min"
    aggregate_k: float = 1.0
    mode: str = "stepped"  # stepped | realtime
    seed: int = 0


class DualSystemAgent:
    """An Agent (reset / act) running System 2 (policy + critic) and System 1 (a small policy)."""

    def __init__(self, system2: ChunkPolicy, critic: Critic, system1: ChunkPolicy,
                 cfg: DualSystemConfig | None = None, device: str = "cpu"):
        require_generative(system2, "the dual system's System 2")
        require_generative(system1, "the dual system's System 1")
        self.s2, self.critic, self.s1 = system2, critic, system1
        self.cfg = cfg or DualSystemConfig()
        self.device = device
        c = self.cfg
        if system1.action_dim != system2.action_dim:
            raise ShapeError(f"System 1 acts in {system1.action_dim}-d, System 2 in {system2.action_dim}-d")
        if system1.chunk_len > system2.chunk_len:
            raise ConfigError(f"System 1 chunk ({system1.chunk_len}) must not exceed System 2's ({system2.chunk_len})")
        if not 1 <= c.s1_every <= system1.chunk_len:
            raise ConfigError(f"s1_every must be in [1, {system1.chunk_len}], got {c.s1_every}")
        if not 1 <= c.s2_every <= system2.chunk_len:
            raise ConfigError(f"s2_every must be in [1, {system2.chunk_len}], got {c.s2_every}")
        if not 0.0 < c.s1_t_start <= 1.0:
            raise ConfigError(f"s1_t_start must be in (0, 1], got {c.s1_t_start}")
        if c.mode not in ("stepped", "realtime"):
            raise ConfigError(f"dual system mode must be stepped or realtime, got {c.mode!r}")
        if critic.chunk_len > system2.chunk_len:
            raise ConfigError(f"the critic scores chunks of {critic.chunk_len}, System 2 makes {system2.chunk_len}")
        self.critic_span = critic.chunk_len
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self.reset(c.seed)

    # -- lifecycle ---------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        self.close()
        self._gen = torch.Generator().manual_seed(int(self.cfg.seed if seed is None else seed))
        self._t = 0
        self._plan2: tuple[int, np.ndarray] | None = None  # (step of its observation, chunk (H2, Da))
        self._plan1: np.ndarray | None = None
        self._k1 = 0
        self._pending: tuple[int, dict] | None = None
        self._stop = False
        self.decisions: list[dict] = []
        self.s1_plans = self.s2_plans = 0
        if self.cfg.mode == "realtime":
            self._worker = threading.Thread(target=self._s2_loop, name="system2", daemon=True)
            self._worker.start()

    def close(self) -> None:
        if getattr(self, "_worker", None) is not None:
            with self._wake:
                self._stop = True
                self._wake.notify_all()
            self._worker.join(timeout=30)
            self._worker = None

    def __del__(self):
        self.close()

    # -- System 2 ----------------------------------------------------------------------
    @torch.no_grad()
    def system2(self, obs: dict, gen: torch.Generator) -> tuple[np.ndarray, dict]:
        """N candidates with varied start time and noise scale; the critic's pick, (H2, Da)."""
        c, t0 = self.cfg, time.perf_counter()
        batch = obs_to_batch([obs], self.device)
        H, Da, N = self.s2.chunk_len, self.s2.action_dim, c.n
        u = torch.rand(2, N, generator=gen)
        t_start = c.s2_t_start[0] + u[0] * (c.s2_t_start[1] - c.s2_t_start[0])
        scale = c.s2_noise_scale[0] + u[1] * (c.s2_noise_scale[1] - c.s2_noise_scale[0])
        ctx = self.s2.encode(batch)
        chunks = []
        for i in range(N):  # start times differ per candidate; the prefix is encoded once
            noise = torch.randn(1, 1, H, Da, generator=gen) * scale[i]
            # below t = 1 the start is the normalised zero chunk noised to t (t * eps for flow)
            chunks.append(self.s2.sample(ctx, n=1, noise=noise.to(self.device), t_start=min(float(t_start[i]), 1.0)))
        chunks = torch.cat(chunks, dim=1)  # (1, N, H2, Da)
        q = self.critic.q(batch, chunks[:, :, : self.critic_span])  # (E, 1, N)
        scores = aggregate_ensemble(q, c.aggregate, c.aggregate_k)[0]
        best = int(scores.argmax())
        self.s2_plans += 1
        return chunks[0, best].cpu().numpy(), {
            "system": 2, "chosen": best, "score_spread": float(scores.max() - scores.min()),
            "t_start": float(t_start[best]), "noise_scale": float(scale[best]),
            "ms": 1000 * (time.perf_counter() - t0),
        }

    def _s2_loop(self) -> None:
        gen = torch.Generator().manual_seed(int(self.cfg.seed) + 1)
        while True:
            with self._wake:
                while self._pending is None and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                step, obs = self._pending
                self._pending = None
            try:
                chunk, info = self.system2(obs, gen)
            except Exception:  # keep the control loop alive; System 1 goes on from noise
                log.exception("System 2 failed; System 1 continues without a fresh plan")
                continue
            with self._lock:
                self._plan2 = (step, chunk)
                self.decisions.append({"step": step, **info})

    # -- System 1 ----------------------------------------------------------------------
    @torch.no_grad()
    def system1(self, obs: dict, start: np.ndarray | None) -> np.ndarray:
        """Refine ``start`` (H1, Da) from the partial time s1_t_start, or sample from noise when None."""
        batch = obs_to_batch([obs], self.device)
        H1, Da = self.s1.chunk_len, self.s1.action_dim
        noise = torch.randn(1, 1, H1, Da, generator=self._gen).to(self.device)
        ctx = self.s1.encode(batch)
        self.s1_plans += 1
        if start is None:
            return self.s1.sample(ctx, n=1, noise=noise)[0, 0].cpu().numpy()
        init = torch.as_tensor(start, dtype=torch.float32, device=self.device).view(1, 1, H1, Da)
        return self.s1.sample(ctx, n=1, noise=noise, init=init, t_start=self.cfg.s1_t_start)[0, 0].cpu().numpy()

    def _slice(self) -> tuple[np.ndarray | None, bool]:
        """The System 2 chunk from the current step on, H1 long (padded with its last action)."""
        with self._lock:
            plan = self._plan2
        if plan is None:
            return None, True
        step, chunk = plan
        offset = self._t - step
        if offset >= len(chunk):
            return None, True  # stale: the plan ran out before System 2 delivered a new one
        part = chunk[offset: offset + self.s1.chunk_len]
        pad = self.s1.chunk_len - len(part)
        if pad:
            part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
        return part, False

    def act(self, obs: dict) -> np.ndarray:
        c = self.cfg
        if c.mode == "stepped":
            if self._t % c.s2_every == 0:
                chunk, info = self.system2(obs, self._gen)
                self._plan2 = (self._t, chunk)
                self.decisions.append({"step": self._t, **info})
        elif self._t % c.s2_every == 0 or self._plan2 is None:
            with self._wake:  # hand System 2 the newest observation; it drops older ones
                self._pending = (self._t, obs)
                self._wake.notify()
        if self._plan1 is None or self._k1 >= c.s1_every:
            start, stale = self._slice()
            self._plan1, self._k1 = self.system1(obs, start), 0
            with self._lock:
                self.decisions.append({"step": self._t, "system": 1, "stale": stale})
        action = self._plan1[self._k1].astype(np.float32)
        self._k1 += 1
        self._t += 1
        if not np.isfinite(action).all():
            raise DataError("dual system produced a NaN or infinite action")
        return action

