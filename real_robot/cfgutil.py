"""Reading config sections that may be Hydra/OmegaConf containers, dicts or plain objects."""

from __future__ import annotations


def cfg_get(cfg, key: str, default=None):
    if cfg is None:
        return default
    if hasattr(cfg, "get"):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def to_plain(x):
    """OmegaConf containers -> plain dicts/lists (LeRobot's draccus wants plain data)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # hydra is optional on the robot computer
        return x
    if isinstance(x, DictConfig | ListConfig):
        return OmegaConf.to_container(x, resolve=True)
    return x
