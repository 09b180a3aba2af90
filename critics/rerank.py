"""Best-of-N re-ranking (V-GPS): sample N chunks behind one encoding, drop the infeasible, let a critic pick.

    reranker = Reranker(policy, critic, RerankConfig(n=16, aggregate="min", selector="argmax"))
    chunk, decision = reranker.plan(batch, last_action)        # (H, Da) numpy, a log dict

Four choices (see ALGORITHMS.md, "Re-ranking in general"): how candidates are drawn
(``n``, the policy's own noise), how a candidate is scored (``aggregate`` over the
ensemble), the selector (``argmax`` or ``softmax`` at a ``temperature``; temperature 0
is argmax) and the scored span of the chunk (``span``: the critic's own length, the
first action, the first k, or the whole chunk). Infeasible candidates (outside the
action limits, or a step per tick larger than allowed) are filtered before scoring;
when none is feasible the wrapper holds position (repeats the last action) and says so.

Shapes: B batch (1 at run time), N candidates, H chunk, Da action size, E ensemble.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from critics.base import aggregate as aggregate_ensemble
from vla.errors import ConfigError, ShapeError
from vla.types import Batch, ChunkPolicy, Critic, require_generative

log = logging.getLogger(__name__)


@dataclass
class RerankConfig:
    n: int = 16  # candidates per decision
    aggregate: str = "min"  # over the ensemble: min | mean | mean_std
    aggregate_k: float = 1.0  # mean_std: mean - k * std
    selector: str = "argmax"  # argmax | softmax
    temperature: float = 1.0  # softmax temperature; 0 means argmax
    span: str | int = "critic"  # critic | first | chunk | k (int): steps of the chunk the critic scores
    seed: int = 0


@dataclass
class Feasibility:
    """Limits a candidate chunk must respect. ``low``/``high`` (Da,) bound every action;
    ``max_step`` (scalar or (Da,)) bounds the change per control tick, from the last executed action on."""

    low: np.ndarray | None = None
    high: np.ndarray | None = None
    max_step: np.ndarray | float | None = None
    tolerance: float = 1e-6

    def mask(self, chunks: Tensor, last_action: Tensor | None) -> Tensor:
        """(B, N, H, Da) -> (B, N) bool, True where feasible."""
        ok = torch.isfinite(chunks).all(-1).all(-1)
        tol = self.tolerance
        if self.low is not None:
            low = torch.as_tensor(self.low, dtype=chunks.dtype, device=chunks.device)
            ok &= (chunks >= low - tol).all(-1).all(-1)
        if self.high is not None:
            high = torch.as_tensor(self.high, dtype=chunks.dtype, device=chunks.device)
            ok &= (chunks <= high + tol).all(-1).all(-1)
        if self.max_step is not None:
            step = torch.as_tensor(self.max_step, dtype=chunks.dtype, device=chunks.device)
            seq = chunks
            if last_action is not None:
                prev = last_action.to(chunks).reshape(chunks.shape[0], 1, 1, -1).expand(-1, chunks.shape[1], 1, -1)
                seq = torch.cat([prev, chunks], dim=2)
            ok &= (seq.diff(dim=2).abs() <= step + tol).all(-1).all(-1)
        return ok


class Reranker:
    """Wraps any ChunkPolicy and any Critic; the policy's weights are never touched."""

    def __init__(self, policy: ChunkPolicy, critic: Critic, cfg: RerankConfig | None = None,
                 feasibility: Feasibility | None = None):
        require_generative(policy, "re-ranking (critic_path=)")
        self.policy, self.critic = policy, critic
        self.cfg = cfg or RerankConfig()
        self.feasibility = feasibility
        if self.cfg.n < 1:
            raise ConfigError(f"rerank.n must be >= 1, got {self.cfg.n}")
        if self.cfg.selector not in ("argmax", "softmax"):
            raise ConfigError(f"rerank.selector must be argmax or softmax, got {self.cfg.selector!r}")
        if self.cfg.temperature < 0:
            raise ConfigError(f"rerank.temperature must be >= 0, got {self.cfg.temperature}")
        if critic.action_dim != policy.action_dim:
            raise ShapeError(f"critic scores {critic.action_dim}-d actions, the policy acts in {policy.action_dim}-d")
        self.span = self._span()
        self._gen = torch.Generator().manual_seed(int(self.cfg.seed))

    def _span(self) -> int:
        H = self.policy.chunk_len
        critic_len = self.critic.chunk_len
        span = {"critic": critic_len, "first": 1, "chunk": H}.get(self.cfg.span, self.cfg.span)
        if not isinstance(span, int) or not 1 <= span <= H:
            raise ConfigError(f"rerank.span={self.cfg.span!r}: use critic, first, chunk or an int in [1, {H}]")
        if span != critic_len:
            raise ConfigError(f"rerank.span covers {span} steps but the critic scores chunks of {critic_len}")
        return span

    def reseed(self, seed: int) -> None:
        self._gen.manual_seed(int(seed))

    @torch.no_grad()
    def scores(self, obs: Batch, chunks: Tensor) -> Tensor:
        """(B, N, H, Da) -> (B, N): the ensemble aggregate of Q over the scored span."""
        q = self.critic.q(obs, chunks[:, :, : self.span])  # (E, B, N)
        return aggregate_ensemble(q, self.cfg.aggregate, self.cfg.aggregate_k)

    @torch.no_grad()
    def choose(self, obs: Batch, last_action: Tensor | None = None) -> tuple[Tensor, list[dict]]:
        """One chunk per row: (B, H, Da) raw actions, and a decision log per row."""
        t0 = time.perf_counter()
        B, N, H, Da = obs_batch_size(obs), self.cfg.n, self.policy.chunk_len, self.policy.action_dim
        noise = torch.randn(B, N, H, Da, generator=self._gen)
        ctx = self.policy.encode(obs)
        chunks = self.policy.sample(ctx, n=N, noise=noise.to(_device_of(obs)))  # (B, N, H, Da)
        scores = self.scores(obs, chunks)
        feasible = (self.feasibility.mask(chunks, last_action) if self.feasibility is not None
                    else torch.ones_like(scores, dtype=torch.bool))
        masked = scores.masked_fill(~feasible, float("-inf"))
        if self.cfg.selector == "softmax" and self.cfg.temperature > 0:
            probs = torch.softmax(masked / self.cfg.temperature, dim=-1)
            probs = torch.where(feasible.any(-1, keepdim=True), probs, torch.full_like(probs, 1.0 / N))
            idx = torch.multinomial(probs.cpu(), 1, generator=self._gen).squeeze(-1).to(scores.device)
        else:
            idx = masked.argmax(-1)
        out = chunks[torch.arange(B), idx]
        decisions = []
        ms = 1000 * (time.perf_counter() - t0)
        for b in range(B):
            held = not bool(feasible[b].any())
            if held:
                if last_action is None:
                    raise ShapeError("no feasible candidate and no last action to hold: refusing to move")
                out[b] = last_action.to(out).reshape(1, Da).expand(H, Da)
                log.warning("re-ranking: none of %d candidates is feasible; holding position", N)
            s = scores[b][feasible[b]] if not held else scores[b]
            decisions.append({
                "chosen": -1 if held else int(idx[b]),
                "held": held,
                "feasible": int(feasible[b].sum()),
                "score": float(scores[b, idx[b]]) if not held else None,
                "score_spread": float(s.max() - s.min()),
                "score_std": float(s.std(unbiased=False)),
                "ms": ms / B,
            })
        return out, decisions

    def plan(self, obs: Batch, last_action: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """The planner interface of ``vla.agent.ChunkAgent``: one observation -> (H, Da), log."""
        last = None if last_action is None else torch.as_tensor(last_action, dtype=torch.float32)[None]
        chunk, decisions = self.choose(obs, last)
        return chunk[0].cpu().numpy(), decisions[0]


def obs_batch_size(obs: Batch) -> int:
    for v in obs.values():
        if isinstance(v, Tensor):
            return v.shape[0]
    return len(obs["task"])


def _device_of(obs: Batch) -> torch.device:
    for v in obs.values():
        if isinstance(v, Tensor):
            return v.device
    return torch.device("cpu")
