"""Sizes and options of the VLA network, as plain dataclasses built from (Hydra) dicts.

Every field has a default, so a config only names what it changes. Unknown keys are
an error (a typo in a YAML file must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vla.errors import ConfigError


@dataclass
class VisionConfig:
    # "conv": a small CNN trained from scratch; "hf": any vision model that
    # transformers.AutoModel loads from the local directory `path`.
    type: str = "conv"
    channels: tuple[int, ...] = (32, 64, 128)  # conv: output channels of the stride-2 stages
    grid: int = 3  # conv: feature map pooled to grid x grid tokens per camera
    path: str | None = None  # hf: local directory (never a hub id: no network at run time)
    frozen: bool = True  # hf: keep the pretrained weights fixed
    image_size: int | None = None  # hf: resize to this side (default: the model's own)


@dataclass
class TextConfig:
    # "bytes": UTF-8 bytes, patched and passed through a small transformer (works offline,
    # no files); "hf": a transformers text model + tokenizer from the local directory
    # `path`; "none": the instruction is ignored.
    type: str = "bytes"
    max_len: int = 64  # bytes: longer instructions are truncated
    patch: int = 4  # bytes: bytes per token
    layers: int = 1  # bytes: transformer layers over the byte tokens
    path: str | None = None
    frozen: bool = True
    max_tokens: int = 32  # hf: tokenizer truncation


@dataclass
class ModelConfig:
    d_model: int = 128
    n_heads: int = 2
    mlp_ratio: float = 4.0
    dropout: float = 0.1  # in the prefix and the expert; on 100 sim demos 0.1 took reach from 58% to 98%
    prefix_layers: int = 1  # transformer layers fusing the prefix tokens (0: none)
    expert_layers: int = 3  # action expert depth
    expert_width: int | None = 64  # action expert width (None: d_model); narrower is cheaper per candidate
    state_hidden: int = 256  # MLP that turns the state (or each part of it) into a token
    # [P, E]: the state is P proprioceptive values then objects of E values each (the sim tasks:
    # [8, 3], xyz per object). Each object (with the proprioception beside it) becomes its own
    # token through one shared MLP plus a slot embedding, so attention can pick the object the
    # instruction names and what is learnt about one object holds for every object. null: the
    # state is one token.
    state_layout: tuple[int, int] | None = None
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self):
        for name in ("d_model", "expert_width"):
            width = getattr(self, name)
            if width is not None and width % self.n_heads:
                raise ConfigError(f"model.{name}={width} is not divisible by model.n_heads={self.n_heads}")
        if self.state_layout is not None:
            if len(self.state_layout) != 2 or self.state_layout[0] < 0 or self.state_layout[1] < 1:
                raise ConfigError(f"model.state_layout must be [proprio_dim >= 0, object_dim >= 1], got {self.state_layout}")
            self.state_layout = (int(self.state_layout[0]), int(self.state_layout[1]))
        if self.vision.type not in ("conv", "hf"):
            raise ConfigError(f"model.vision.type must be 'conv' or 'hf', got {self.vision.type!r}")
        if self.text.type not in ("bytes", "hf", "none"):
            raise ConfigError(f"model.text.type must be 'bytes', 'hf' or 'none', got {self.text.type!r}")
        for part in (self.vision, self.text):
            if part.type == "hf" and not part.path:
                raise ConfigError(
                    f"model.{'vision' if part is self.vision else 'text'}.type=hf needs a local path"
                )


def to_plain(cfg: Any) -> Any:
    """A dataclass, OmegaConf node or mapping as plain JSON-serialisable Python."""
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    elif type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return {str(k): to_plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_plain(v) for v in cfg]
    return cfg


def from_dict(cls, data: Any, where: str = "policy"):
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclass fields.

    Unknown keys raise ConfigError naming the full key (``where.key``).
    """
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    data = to_plain(data)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {where}.{unknown[0]} (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        default = (
            fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        )
        if default is not None and dataclasses.is_dataclass(default):
            value = from_dict(default, value, f"{where}.{name}")
        elif isinstance(value, list) and isinstance(fields[name].default, tuple):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
