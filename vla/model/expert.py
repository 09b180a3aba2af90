"""The action expert: a transformer over the H noisy action tokens that attends to the prefix.

Each layer's attention keys/values are [prefix K/V ; action-token K/V]. The prefix part
depends only on the observation, so ``prefix_kv`` computes it once per observation
(pi0's prefix KV cache); sampling then reuses it for every candidate and denoising step.
Time enters through adaptive layer norm (DiT's adaLN-Zero), which keeps the prefix
independent of t and therefore cacheable.

Shapes: B' = B*N rows (N candidates per observation), H chunk length, Da action size,
T prefix tokens, D expert width, h heads, dh = D / h.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla.model.config import ModelConfig, from_dict

KV = list[tuple[Tensor, Tensor]]  # per layer: keys, values (B, h, T, dh)


def time_embedding(t: Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> Tensor:
    """Sine-cosine features (B, dim) of a scalar time t (B,) in [0, 1] (openpi's periods)."""
    frac = torch.linspace(0.0, 1.0, dim // 2, device=t.device, dtype=torch.float32)
    freq = 2 * math.pi / (min_period * (max_period / min_period) ** frac)
    angle = t.float()[:, None] * freq[None]
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class ExpertBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, mlp_ratio: float, dropout: float, d_prefix: int):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.qkv = nn.Linear(d, 3 * d)
        # The prefix stream gets its own norm and K/V projection (as pi0's VLM and expert do).
        self.prefix_norm = nn.LayerNorm(d_prefix)
        self.prefix_kv = nn.Linear(d_prefix, 2 * d)
        self.out = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        hidden = int(d * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d))
        self.ada = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.ada.weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada.bias)

    def _heads(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, h, L, dh)
        B, L, D = x.shape
        return x.view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2)

    def project_prefix(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.prefix_kv(self.prefix_norm(tokens)).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x: Tensor, c: Tensor, kv: tuple[Tensor, Tensor], attn_mask: Tensor | None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=-1)
        q, k, v = self.qkv(_modulate(self.norm1(x), shift1, scale1)).chunk(3, dim=-1)
        k = torch.cat([kv[0], self._heads(k)], dim=2)
        v = torch.cat([kv[1], self._heads(v)], dim=2)
        a = F.scaled_dot_product_attention(
            self._heads(q), k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + gate1 * self.out(a.transpose(1, 2).flatten(2))
        return x + gate2 * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class ActionExpert(nn.Module):
    """Maps a noisy chunk (B', H, Da) and a time (B',) in [0, 1] to the head's target (B', H, Da)."""

    def __init__(self, cfg: ModelConfig | dict, action_dim: int, chunk_len: int):
        super().__init__()
        cfg = from_dict(ModelConfig, cfg, "model")
        # The expert may be narrower than the prefix (as pi0's and SmolVLA's): it runs N times
        # per denoising step, the prefix once per observation.
        D = cfg.expert_width or cfg.d_model
        self.d_model = D
        self.in_proj = nn.Linear(action_dim, D)
        self.pos = nn.Parameter(torch.randn(chunk_len, D) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.blocks = nn.ModuleList(
            ExpertBlock(D, cfg.n_heads, cfg.mlp_ratio, cfg.dropout, cfg.d_model)
            for _ in range(cfg.expert_layers)
        )
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False)
        self.ada_out = nn.Linear(D, 2 * D)
        self.out = nn.Linear(D, action_dim)
        for layer in (self.ada_out, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def prefix_kv(self, tokens: Tensor) -> KV:
        """Per-layer keys/values of the prefix tokens (B, T, D): the part worth caching."""
        return [block.project_prefix(tokens) for block in self.blocks]

    @staticmethod
    def repeat_kv(kv: KV, mask: Tensor, n: int) -> tuple[KV, Tensor]:
        """Cached prefix K/V and mask for N candidates per observation: rows b*N + j."""
        if n == 1:
            return kv, mask
        return [
            (k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for k, v in kv
        ], mask.repeat_interleave(n, 0)

    def forward(self, x: Tensor, time: Tensor, kv: KV, prefix_mask: Tensor) -> Tensor:
        """x (B', H, Da), time (B',), kv per layer (B', h, T, dh), prefix_mask (B', T) -> (B', H, Da)."""
        Bp, H, _ = x.shape
        # SiLU once here for every adaLN projection (DiT applies it before each of them).
        c = F.silu(self.time_mlp(time_embedding(time, self.d_model)))
        attn_mask = None
        if not bool(prefix_mask.all()):  # SDPA takes its fast path without a mask
            keep = torch.cat([prefix_mask, prefix_mask.new_ones(Bp, H)], dim=1)
            attn_mask = keep[:, None, None, :]
        h = self.in_proj(x) + self.pos[:H]
        for block, layer_kv in zip(self.blocks, kv, strict=True):
            h = block(h, c, layer_kv, attn_mask)
        shift, scale = self.ada_out(c)[:, None].chunk(2, dim=-1)
        return self.out(_modulate(self.norm_out(h), shift, scale))
