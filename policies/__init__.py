"""Generative action heads and the objectives that train them.

``build_policy(cfg, features, stats)`` makes the policy a ``configs/policy`` entry describes (a
fresh VLA, or a LeRobot checkpoint through the adapter); ``load_policy(path)`` opens any policy
checkpoint (ours or a LeRobot one). Every one of them keeps the ``vla.types.ChunkPolicy`` contract.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from policies import vla_policy
from policies.vla_policy import VLAContext, VLAPolicy
from vla.checkpoint import read_json, resolve_checkpoint
from vla.errors import CheckpointError

# A LeRobot checkpoint saved by policies/lerobot_adapter.py carries this marker next to
# LeRobot's own config.json (whose "type" is LeRobot's policy type, e.g. "smolvla").
ADAPTER_MARKER = "vla_adapter.json"


def checkpoint_type(path: Path) -> str:
    """'vla', 'lerobot', or whatever the checkpoint's config.json calls itself.

    The rule of policies/lerobot_adapter.py: a folder is a LeRobot checkpoint when it holds the
    adapter's marker, or when its config.json has a type other than 'vla' together with the
    input_features/output_features that every LeRobot policy config writes.
    """
    marker = path / ADAPTER_MARKER
    if marker.is_file():
        try:
            return str(json.loads(marker.read_text()).get("type", "lerobot"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"broken JSON in {marker}: {e}") from None
    config = read_json(path / "config.json")
    if not isinstance(config, dict):
        return "None"
    if config.get("type") != "vla" and "input_features" in config and "output_features" in config:
        return "lerobot"
    return str(config.get("type"))


def build_policy(cfg: dict, features: dict | None, stats: dict | None):
    """The policy of a ``configs/policy`` entry: ``type: lerobot`` loads ``cfg["path"]`` (its own
    architecture, chunk length and stats; checked against ``features`` when given), else a fresh VLA
    for ``features`` ({key: shape}) normalised with ``stats``."""
    if cfg.get("type") == "lerobot":
        from policies.lerobot_adapter import build_lerobot_policy  # optional, heavy imports

        return build_lerobot_policy(cfg, features, stats)
    return vla_policy.build_policy(cfg, features, stats)


def load_policy(path: str | os.PathLike, device: str = "cpu"):
    """A ChunkPolicy from a checkpoint folder or a training run's out folder (its last checkpoint)."""
    ckpt = resolve_checkpoint(path)
    kind = checkpoint_type(ckpt)
    if kind == "vla":
        return VLAPolicy.from_pretrained(ckpt, device=device)
    if kind == "lerobot":
        from policies.lerobot_adapter import LeRobotChunkPolicy  # optional, heavy imports

        return LeRobotChunkPolicy.from_pretrained(ckpt, device=device)
    raise CheckpointError(f"{ckpt}: unknown policy checkpoint type {kind!r} (expected 'vla' or 'lerobot')")


__all__ = ["VLAContext", "VLAPolicy", "build_policy", "checkpoint_type", "load_policy"]
