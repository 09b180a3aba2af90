"""The observation encoder: state, cameras and instruction -> prefix tokens.

Standalone so that critics can build their own copy from the same config::

    enc = ObservationEncoder(cfg.model, features)
    prefix = enc(batch)            # batch with a *normalised* observation.state
    prefix.tokens (B, T, D), prefix.mask (B, T) bool (True = real token), prefix.pooled (B, D)

Inputs follow ``features``: state only, cameras only, or both, with any number of
cameras (each camera's tokens carry their own learned camera embedding).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from vla.errors import ConfigError, ShapeError
from vla.model.config import ModelConfig, from_dict
from vla.model.text import ByteTextEncoder, HFTextEncoder, transformer_layer
from vla.model.vision import ConvImageEncoder, HFVisionEncoder
from vla.types import STATE, TASK, Batch, image_keys


class Prefix(NamedTuple):
    tokens: Tensor  # (B, T, D)
    mask: Tensor  # (B, T) bool, True where a token is real (text padding is False)
    pooled: Tensor  # (B, D) masked mean of the tokens


def canonical_features(features: dict) -> dict[str, tuple[int, ...]]:
    """The observation features the network reads, as tuples; images as (3, H, W).

    Accepts dataset/env layouts: camera shapes given as (H, W, 3) are transposed. Keys
    other than the state and the cameras are dropped (the action is the policy's business).
    """
    out = {}
    for key, shape in features.items():
        if key != STATE and not key.startswith("observation.images."):
            continue
        shape = tuple(int(s) for s in (shape["shape"] if isinstance(shape, dict) else shape))
        if key != STATE:
            if len(shape) != 3 or 3 not in (shape[0], shape[-1]):
                raise ShapeError(f"feature {key} must be an RGB image (3, H, W) or (H, W, 3), got {shape}")
            if shape[0] != 3:
                shape = (shape[2], shape[0], shape[1])
        elif len(shape) != 1:
            raise ShapeError(f"feature {STATE} must be a vector (Ds,), got {shape}")
        out[key] = shape
    return out


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out))


class ObservationEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig | dict, features: dict):
        super().__init__()
        cfg = from_dict(ModelConfig, cfg, "model")
        self.cfg = cfg
        self.features = canonical_features(features)
        self.cameras = image_keys(self.features)
        self.state_dim = self.features[STATE][0] if STATE in self.features else None
        if self.state_dim is None and not self.cameras:
            raise ConfigError("features have neither observation.state nor any observation.images.<cam>")
        D = cfg.d_model

        self.state = self.objects = None
        if self.state_dim is not None:
            self.proprio_dim, self.object_dim = cfg.state_layout or (self.state_dim, 0)
            if self.object_dim and (self.state_dim < self.proprio_dim
                                    or (self.state_dim - self.proprio_dim) % self.object_dim):
                raise ShapeError(
                    f"model.state_layout={list(cfg.state_layout)} does not fit {STATE} of size {self.state_dim}: "
                    f"it must be {self.proprio_dim} + a multiple of {self.object_dim}"
                )
            self.n_objects = (self.state_dim - self.proprio_dim) // self.object_dim if self.object_dim else 0
            if self.proprio_dim:
                self.state = _mlp(self.proprio_dim, cfg.state_hidden, D)
            if self.n_objects:
                # shared by every object; each object also sees the proprioception, so that its token
                # can say where it is relative to the gripper (what grasping and placing need)
                self.objects = _mlp(self.object_dim + self.proprio_dim, cfg.state_hidden, D)
                self.object_emb = nn.Parameter(torch.randn(self.n_objects, D) * 0.02)
        self.vision = None
        if self.cameras:
            v = cfg.vision
            # One shared image encoder; cameras are told apart by their embedding below.
            self.vision = (
                ConvImageEncoder(D, v.channels, v.grid)
                if v.type == "conv"
                else HFVisionEncoder(D, v.path, v.frozen, v.image_size)
            )
            self.camera_emb = nn.Parameter(torch.randn(len(self.cameras), D) * 0.02)
        t = cfg.text
        self.text = None
        if t.type == "bytes":
            self.text = ByteTextEncoder(
                D, cfg.n_heads, t.max_len, t.patch, t.layers, cfg.mlp_ratio, cfg.dropout
            )
        elif t.type == "hf":
            self.text = HFTextEncoder(D, t.path, t.frozen, t.max_tokens)
        # Type embeddings: 0 state, 1 text (cameras have their own above).
        self.type_emb = nn.Parameter(torch.randn(2, D) * 0.02)
        self.fusion = nn.ModuleList(
            transformer_layer(D, cfg.n_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.prefix_layers)
        )
        self.norm = nn.LayerNorm(D)

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    def check_batch(self, obs: Batch) -> int:
        """Batch size, after checking that ``obs`` carries the features this encoder was built for."""
        B = None
        for key, shape in self.features.items():
            x = obs.get(key)
            if x is None:
                raise ShapeError(f"observation lacks {key}, which the model was built with")
            if tuple(x.shape[1:]) != shape:
                raise ShapeError(
                    f"{key} has shape {tuple(x.shape)}, the model expects (B, {', '.join(map(str, shape))})"
                )
            if B is not None and x.shape[0] != B:
                raise ShapeError(f"{key} has batch size {x.shape[0]}, other inputs have {B}")
            B = x.shape[0]
        if self.text is not None:
            task = obs.get(TASK)
            if task is None or isinstance(task, str) or len(task) != B:
                raise ShapeError(f"observation needs '{TASK}' as a list of {B} instruction strings")
        return B

    def forward(self, obs: Batch) -> Prefix:
        B = self.check_batch(obs)
        parts, masks = [], []
        device = self.type_emb.device
        for i, cam in enumerate(self.cameras):
            tok = self.vision(obs[cam].to(device=device, dtype=torch.float32)) + self.camera_emb[i]
            parts.append(tok)
            masks.append(torch.ones(tok.shape[:2], dtype=torch.bool, device=device))
        if self.text is not None:
            tok, mask = self.text(obs[TASK], device)
            parts.append(tok + self.type_emb[1])
            masks.append(mask)
        if self.state_dim is not None:
            state = obs[STATE].to(device=device, dtype=torch.float32)
            tok = []
            if self.state is not None:
                tok.append(self.state(state[:, : self.proprio_dim])[:, None])
            if self.objects is not None:
                objects = state[:, self.proprio_dim:].reshape(B, self.n_objects, self.object_dim)
                proprio = state[:, None, : self.proprio_dim].expand(B, self.n_objects, self.proprio_dim)
                tok.append(self.objects(torch.cat([objects, proprio], dim=-1)) + self.object_emb)
            tok = torch.cat(tok, dim=1)
            parts.append(tok + self.type_emb[0])
            masks.append(torch.ones(tok.shape[:2], dtype=torch.bool, device=device))
        x, mask = torch.cat(parts, dim=1), torch.cat(masks, dim=1)
        for layer in self.fusion:
            x = layer(x, src_key_padding_mask=~mask)
        x = self.norm(x)
        w = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * w).sum(1) / w.sum(1)
        return Prefix(x, mask, pooled)
