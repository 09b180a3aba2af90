"""Hume's value-query head: a query token reads the VLA's own prefix features and a candidate chunk.

    tokens, mask = policy.encode(obs)            # the VLA's prefix (B, T, D), computed once
    [query, a_1 .. a_H] --self-attention--> --cross-attention into the prefix--> query out
    query out -> E MLP heads -> Q (E, B, N)

It is trained as a Cal-QL critic over chunks (Hume feeds Cal-QL critics from this head):
the chunk TD target with gamma**H and the done mask from the data, the bootstrap drawn
from the VLA itself, and the Monte-Carlo returns of the data (``mc_return``, accumulated
over the whole episode) as the calibration bound. The public Hume code's defects are not
copied: its return was the one-step reward and its TD mask held rewards. ``alpha=0``
leaves the plain chunk TD.

The VLA is frozen (``train_vla=false``: only the head trains, on the prefix it reads) or
trained jointly (``train_vla=true``: the critic loss reaches the VLA's encoder, and the
VLA's own generative loss, weighted by ``bc_weight``, keeps it a policy). Either way the
checkpoint keeps a copy of the VLA in ``<ckpt>/policy`` so that the head always finds the
prefix it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from critics.base import ChunkCritic
from critics.calql import CalQLConfig, CalQLCritic
from critics.nets import EnsembleMLP
from vla.errors import CheckpointError, ConfigError
from vla.types import Batch, ChunkPolicy

POLICY_DIR = "policy"


@dataclass
class VQHConfig(CalQLConfig):
    type: str = "vqh"
    train_vla: bool = False  # joint training of the VLA (else frozen)
    bc_weight: float = 1.0  # joint: weight of the VLA's generative loss next to the critic loss
    d_model: int = 128  # width of the query transformer
    n_heads: int = 4
    layers: int = 2


class ValueQueryHead(nn.Module):
    """(prefix tokens (B, T, D), mask (B, T), normalised chunks (B, N, H, Da)) -> (E, B, N)."""

    def __init__(self, d_prefix: int, cfg: VQHConfig, action_dim: int):
        super().__init__()
        d = cfg.d_model
        self.prefix_proj = nn.Linear(d_prefix, d)
        self.action_proj = nn.Linear(action_dim, d)
        self.pos = nn.Parameter(torch.randn(cfg.chunk_len, d) * 0.02)
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        layer = nn.TransformerDecoderLayer(d, cfg.n_heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.layers)
        self.norm = nn.LayerNorm(d)
        self.heads = EnsembleMLP(cfg.ensemble, d, list(cfg.hidden), 1, cfg.activation)

    def forward(self, tokens: Tensor, mask: Tensor, chunks: Tensor) -> Tensor:
        B, N, H, _ = chunks.shape
        # Every candidate reads the same prefix: repeat it N times (keys/values only).
        memory = self.prefix_proj(tokens).repeat_interleave(N, dim=0)  # (B*N, T, d)
        pad = (~mask.bool()).repeat_interleave(N, dim=0)  # (B*N, T)
        acts = self.action_proj(chunks.reshape(B * N, H, -1)) + self.pos  # (B*N, H, d)
        x = torch.cat([self.query.expand(B * N, 1, -1), acts], dim=1)
        out = self.decoder(x, memory, memory_key_padding_mask=pad)
        return self.heads(self.norm(out[:, 0])).reshape(-1, B, N)


class VQHCritic(CalQLCritic):
    type_name = "vqh"
    config_cls = VQHConfig

    def __init__(self, cfg: VQHConfig, features: dict, stats: dict, policy: ChunkPolicy | None = None):
        if policy is None:
            raise ConfigError("vqh critic reads the VLA's prefix features: it needs the policy (policy_path=)")
        if cfg.chunk_len > policy.chunk_len:
            raise ConfigError(f"critic.chunk_len={cfg.chunk_len} exceeds the policy's chunk of {policy.chunk_len}")
        if cfg.train_vla and cfg.chunk_len != policy.chunk_len:
            raise ConfigError(
                f"vqh with train_vla=true trains the VLA on the critic's batches: "
                f"critic.chunk_len={cfg.chunk_len} must equal the policy's {policy.chunk_len}"
            )
        super().__init__(cfg, features, stats, policy)

    def build_encoder(self, policy: ChunkPolicy) -> tuple[None, int]:
        """No encoder of its own: the prefix comes from the VLA (registered only when it trains)."""
        d_prefix = getattr(getattr(policy, "encoder", None), "d_model", None)
        if d_prefix is None:
            raise ConfigError("vqh critic needs a VLA policy (its encode() gives prefix tokens; policy.encoder.d_model)")
        if self.cfg.train_vla:
            self.vla = policy
        else:
            if isinstance(policy, nn.Module):
                policy.requires_grad_(False).eval()
            object.__setattr__(self, "vla", policy)  # not a submodule: its weights are not ours to train or save
        return None, int(d_prefix)

    def build_heads(self) -> nn.Module:
        return ValueQueryHead(self.feature_dim, self.cfg, self.action_dim)

    def obs_features(self, obs: Batch, target: bool = False) -> tuple[Tensor, Tensor]:
        """The VLA's prefix (tokens (B, T, D), mask (B, T)); gradients reach it only when it trains."""
        grad = self.cfg.train_vla and not target and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad):
            ctx = self.vla.encode(obs)
        return ctx.tokens, ctx.mask

    def score(self, feats, chunks: Tensor, target: bool = False) -> Tensor:
        tokens, mask = feats
        return self.q_scale * (self.target_heads if target else self.heads)(tokens, mask, chunks)

    def value(self, obs: Batch, policy: ChunkPolicy | None = None, n: int = 8) -> Tensor:
        return super().value(obs, self.vla if policy is None else policy, n)

    def loss(self, batch: Batch, policy: ChunkPolicy | None = None) -> tuple[Tensor, dict]:
        """Cal-QL on the head; the bootstrap policy is the VLA itself unless another is given."""
        loss, logs = super().loss(batch, self.vla if policy is None else policy)
        if self.cfg.train_vla and self.cfg.bc_weight > 0:
            bc = self.vla.loss(batch)
            loss = loss + self.cfg.bc_weight * bc
            logs["bc_loss"] = bc.detach()
        return loss, logs

    # -- checkpoints: the head's weights, and the VLA it reads in <ckpt>/policy ---------------------
    def weights_state(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("vla.")}

    def save_pretrained(self, directory: str | Path) -> None:
        super().save_pretrained(directory)
        if not hasattr(self.vla, "save_pretrained"):
            raise CheckpointError(f"vqh critic: the policy ({type(self.vla).__name__}) cannot be saved with it")
        self.vla.save_pretrained(Path(directory) / POLICY_DIR)

    @classmethod
    def from_checkpoint(cls, directory: Path, data: dict, stats: dict, policy=None, device="cpu") -> ChunkCritic:
        if policy is None:
            from policies import load_policy

            policy = load_policy(directory / POLICY_DIR, device=device)
        return super().from_checkpoint(directory, data, stats, policy=policy, device=device)
