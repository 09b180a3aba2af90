"""Generative action heads and the objectives that train them.

``build_policy(cfg, features, stats)`` makes a fresh VLA policy; ``load_policy(path)`` opens
any policy checkpoint (ours or a LeRobot one through the adapter).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from policies.vla_policy import VLAContext, VLAPolicy, build_policy
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
