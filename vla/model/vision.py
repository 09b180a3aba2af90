"""Camera encoders: images (B, 3, H, W) float in [0, 1] -> tokens (B, T, D).

``ConvImageEncoder`` is the default (small, trained from scratch, fast on a CPU).
``HFVisionEncoder`` wraps any vision model that ``transformers`` loads from a local
directory (ViT, SigLIP/CLIP vision towers, ResNet, ...), frozen or fine-tuned.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla.errors import ConfigError


class ConvImageEncoder(nn.Module):
    """Stride-2 conv stages, then the feature map pooled to ``grid x grid`` tokens."""

    def __init__(self, d_model: int, channels=(32, 64, 128), grid: int = 3):
        super().__init__()
        layers, c_in = [], 3
        for c in channels:
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                nn.GroupNorm(min(8, c), c),
                nn.SiLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.GroupNorm(min(8, c), c),
                nn.SiLU(),
            ]
            c_in = c
        self.net = nn.Sequential(*layers)
        # Adaptive pooling keeps the token count fixed whatever the camera resolution.
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Linear(c_in, d_model)
        self.pos = nn.Parameter(torch.randn(grid * grid, d_model) * 0.02)

    def forward(self, images: Tensor) -> Tensor:
        feat = self.pool(self.net(images * 2.0 - 1.0))  # (B, C, g, g)
        return self.proj(feat.flatten(2).transpose(1, 2)) + self.pos  # (B, g*g, D)


class HFVisionEncoder(nn.Module):
    """A ``transformers`` vision model from a local directory, projected to ``d_model``."""

    def __init__(self, d_model: int, path: str, frozen: bool = True, image_size: int | None = None):
        super().__init__()
        from transformers import AutoModel

        if not Path(path).is_dir():
            raise ConfigError(f"model.vision.path={path!r} is not a local directory")
        model = AutoModel.from_pretrained(path, local_files_only=True)
        # Full vision-language models (CLIP, SigLIP) carry their image tower as .vision_model.
        self.backbone = getattr(model, "vision_model", model)
        self.frozen = frozen
        if frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

        mean, std, size = _image_preprocessing(Path(path), self.backbone.config)
        self.image_size = image_size or size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():  # the output width differs between families; measure it once
            side = self.image_size or 224
            width = self._features(torch.zeros(1, 3, side, side)).shape[-1]
        self.proj = nn.Linear(width, d_model)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # a frozen backbone keeps its eval-mode norms and dropout
            self.backbone.eval()
        return self

    def _features(self, pixels: Tensor) -> Tensor:
        out = self.backbone(pixel_values=pixels).last_hidden_state
        if out.dim() == 4:  # conv backbones: (B, C, h, w) -> (B, h*w, C)
            out = out.flatten(2).transpose(1, 2)
        return out

    def forward(self, images: Tensor) -> Tensor:
        if self.image_size and images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        pixels = (images - self.mean) / self.std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            feat = self._features(pixels)
        return self.proj(feat)


def _image_preprocessing(path: Path, config) -> tuple[list[float], list[float], int | None]:
    """Mean, std and side length from the model's preprocessor_config.json (if any)."""
    mean, std, size = [0.5] * 3, [0.5] * 3, getattr(config, "image_size", None)
    file = path / "preprocessor_config.json"
    if file.is_file():
        pre = json.loads(file.read_text())
        mean = pre.get("image_mean", mean)
        std = pre.get("image_std", std)
        s = pre.get("size")
        if isinstance(s, dict):
            s = s.get("height") or s.get("shortest_edge")
        size = s or size
    return mean, std, int(size) if size else None
