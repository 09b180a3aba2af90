"""Critics: chunked Q ensemble (ALOE), Cal-QL and IQL (V-GPS), the Hume value-query head.

``build_critic(cfg, features, stats)`` makes one from a config (``cfg.type``);
``load_critic(path)`` reads a checkpoint folder or a training run's ``out`` folder.
"""

from __future__ import annotations

from critics.aloe import ALOECritic
from critics.base import ChunkCritic, CriticConfig, aggregate, chunk_td_target, make_config, read_critic_dir
from critics.calql import CalQLConfig, CalQLCritic
from critics.iql import IQLConfig, IQLCritic
from critics.vqh import VQHConfig, VQHCritic
from vla.checkpoint import MODEL_CONFIG
from vla.errors import CheckpointError, ConfigError

CRITICS: dict[str, type[ChunkCritic]] = {c.type_name: c for c in (ALOECritic, CalQLCritic, IQLCritic, VQHCritic)}


def critic_class(name: str, where: str = "critic.type") -> type[ChunkCritic]:
    if name not in CRITICS:
        raise ConfigError(f"{where}={name!r}: choose one of {sorted(CRITICS)}")
    return CRITICS[name]


def build_critic(cfg, features: dict[str, tuple], stats: dict, **kwargs) -> ChunkCritic:
    """A fresh critic of type ``cfg["type"]`` (a dict, OmegaConf node or config dataclass)."""
    name = cfg.type if hasattr(cfg, "type") else cfg.get("type", "aloe")
    cls = critic_class(name)
    return cls(make_config(cls, cfg), features, stats, **kwargs)


def load_critic(path, device="cpu", **kwargs) -> ChunkCritic:
    """A trained critic in eval mode, from a checkpoint folder or a training run's ``out``.

    ``kwargs`` go to the critic's ``from_checkpoint`` (``policy=`` for a vqh critic, which
    otherwise loads the VLA saved with it).
    """
    directory, data, stats = read_critic_dir(path)
    if data["type"] not in CRITICS:
        raise CheckpointError(f"{directory / MODEL_CONFIG}: unknown critic type {data['type']!r}")
    return CRITICS[data["type"]].from_checkpoint(directory, data, stats, device=device, **kwargs)


__all__ = [
    "ALOECritic",
    "CRITICS",
    "CalQLConfig",
    "CalQLCritic",
    "ChunkCritic",
    "CriticConfig",
    "IQLConfig",
    "IQLCritic",
    "VQHConfig",
    "VQHCritic",
    "aggregate",
    "build_critic",
    "chunk_td_target",
    "load_critic",
]
