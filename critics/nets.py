"""Building blocks shared by the critics: ensemble MLP heads and a light observation encoder.

Shapes: ``B`` batch, ``N`` candidates, ``H`` chunk length, ``Da`` action size,
``E`` ensemble members, ``F`` observation feature size.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vla.errors import ConfigError, ShapeError
from vla.model import ObservationEncoder
from vla.types import STATE, TASK


def _activation(name: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "gelu": nn.GELU, "mish": nn.Mish, "silu": nn.SiLU}
    if name not in acts:
        raise ConfigError(f"critic activation {name!r}: choose one of {sorted(acts)}")
    return acts[name]()


class EnsembleLinear(nn.Module):
    """E independent linear layers applied in one batched matmul: (E, M, in) -> (E, M, out)."""

    def __init__(self, ensemble: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, d_in, d_out))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, d_out))
        # The same init as nn.Linear, drawn independently per member (the members' only difference).
        bound = 1.0 / math.sqrt(d_in)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:  # one input shared by all members
            x = x.unsqueeze(0).expand(self.weight.shape[0], -1, -1)
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """E MLPs (LayerNorm after each hidden layer, as in RLPD/Cal-QL critics): (M, in) -> (E, M, out)."""

    def __init__(self, ensemble: int, d_in: int, hidden: list[int], d_out: int = 1, activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        d = d_in
        for h in hidden:
            layers += [EnsembleLinear(ensemble, d, h), nn.LayerNorm(h, elementwise_affine=False), _activation(activation)]
            d = h
        layers.append(EnsembleLinear(ensemble, d, d_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class HashedText(nn.Module):
    """Bag of hashed words and word pairs -> (B, D): a language embedding that needs no download.

    crc32 (not Python's salted ``hash``) keeps the ids stable across processes, so a
    saved critic reads instructions the same way after loading.
    """

    def __init__(self, dim: int, buckets: int = 1024):
        super().__init__()
        self.buckets = buckets
        self.bag = nn.EmbeddingBag(buckets, dim, mode="mean")
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            words = re.findall(r"[a-z0-9]+", text.lower()) or ["<empty>"]
            grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
            self._cache[text] = [zlib.crc32(g.encode()) % self.buckets for g in grams]
        return self._cache[text]

    def forward(self, texts: list[str]) -> Tensor:
        ids = [self.ids(t) for t in texts]
        flat = torch.tensor([i for row in ids for i in row], device=self.bag.weight.device)
        offsets = torch.tensor([0] + [len(r) for r in ids[:-1]], device=flat.device).cumsum(0)
        return self.bag(flat, offsets)


class SmallCNN(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, D); pooled to a 4x4 grid so any image size works."""

    def __init__(self, dim: int, channels: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(channels * 16, dim),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images * 2.0 - 1.0)


def random_shift(images: Tensor, pad: int) -> Tensor:
    """DrQ augmentation: replicate-pad by ``pad`` and crop back at a random offset per sample."""
    if pad <= 0:
        return images
    b, _, h, w = images.shape
    padded = nn.functional.pad(images, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,), device=images.device)
    dy = torch.randint(0, 2 * pad + 1, (b,), device=images.device)
    rows = (torch.arange(h, device=images.device)[None, :] + dy[:, None])  # (B, H)
    cols = (torch.arange(w, device=images.device)[None, :] + dx[:, None])  # (B, W)
    idx_b = torch.arange(b, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, 3)
    return out.permute(0, 3, 1, 2)


@dataclass
class EncoderConfig:
    """The critic's own observation encoder ("mlp": state MLP + hashed text + small CNN per camera)."""

    type: str = "mlp"  # "mlp" | "vla" (vla.model.ObservationEncoder, a separate copy of the policy's)
    dim: int = 128  # mlp: feature size F (vla: model.d_model)
    use_text: bool = True
    use_images: bool = True
    image_aug_pad: int = 0  # random-shift pixels while training (0: off)
    init_from_policy: bool = True  # vla: start from the policy's encoder weights when given
    model: dict | None = None  # vla: the ModelConfig (None: the policy's, else the defaults)
    observation_keys: list[str] | None = None  # vla: inputs read (None: the policy's, else all)


class ObsEncoder(nn.Module):
    """Raw observation (normalised state, images in [0, 1], task strings) -> features (B, F)."""

    def __init__(self, cfg: EncoderConfig, state_dim: int, cameras: list[str]):
        super().__init__()
        self.cfg = cfg
        self.cameras = cameras if cfg.use_images else []
        d = cfg.dim
        parts = 0
        if state_dim > 0:
            self.state = nn.Linear(state_dim, d)
            parts += 1
        self.text = HashedText(d) if cfg.use_text else None
        parts += int(cfg.use_text)
        self.cams = nn.ModuleDict({c.replace(".", "_"): SmallCNN(d) for c in self.cameras})
        parts += len(self.cameras)
        if parts == 0:
            raise ConfigError("critic encoder: no state, text or camera input to read")
        self.out = nn.Sequential(nn.LayerNorm(parts * d), nn.Linear(parts * d, d), nn.ReLU())
        self.state_dim = state_dim

    def forward(self, obs: dict) -> Tensor:
        feats = []
        if self.state_dim > 0:
            state = obs[STATE]
            if state.shape[-1] != self.state_dim:
                raise ShapeError(f"critic encoder: '{STATE}' has {state.shape[-1]} dims, expected {self.state_dim}")
            feats.append(self.state(state))
        if self.text is not None:
            feats.append(self.text(list(obs[TASK])))
        for cam in self.cameras:
            if cam not in obs:
                raise ShapeError(f"critic encoder: camera '{cam}' missing from the observation")
            img = obs[cam]
            if self.training:
                img = random_shift(img, self.cfg.image_aug_pad)
            feats.append(self.cams[cam.replace(".", "_")](img))
        return self.out(torch.cat(feats, dim=-1))


class VLAFeatures(nn.Module):
    """The VLA's observation encoder (own copy) -> pooled prefix features (B, D)."""

    def __init__(self, model_cfg: dict, features: dict, image_aug_pad: int = 0):
        super().__init__()
        self.enc = ObservationEncoder(model_cfg, features)
        self.image_aug_pad = image_aug_pad

    @property
    def dim(self) -> int:
        return self.enc.d_model

    def forward(self, obs: dict) -> Tensor:
        if self.training and self.image_aug_pad > 0:
            obs = {k: (random_shift(v, self.image_aug_pad) if k in self.enc.cameras else v) for k, v in obs.items()}
        return self.enc(obs).pooled
