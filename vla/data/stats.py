"""Normalisation statistics, computed from the data and saved with every checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from vla.errors import CheckpointError, ShapeError

STATS_FILE = "stats.json"
# floor of the std (and half-range): a feature nearly constant in the data must not blow up
# when it varies at run time (units are metres and radians, so 1e-2 is "nearly constant")
_EPS = 1e-2


def array_stats(x: np.ndarray) -> dict[str, list[float]]:
    """mean/std/min/max over the first axis of (T, D) data."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
    }


def compute_stats(dataset) -> dict[str, dict[str, list[float]]]:
    """Stats of the state and action columns of a ``ChunkDataset`` (images stay in [0, 1])."""
    return dataset.compute_stats()


def save_stats(stats: dict, directory: str | Path) -> None:
    Path(directory, STATS_FILE).write_text(json.dumps(stats, indent=1))


def load_stats(directory: str | Path) -> dict:
    path = Path(directory, STATS_FILE)
    if not path.exists():
        raise CheckpointError(f"{path}: normalisation stats missing")
    return json.loads(path.read_text())


class Normalizer(nn.Module):
    """Mean/std normalisation per key; stats live in buffers so they travel with the weights.

    Keys without stats (images) pass through unchanged.
    """

    def __init__(self, stats: dict[str, dict[str, list[float]]], mode: str = "mean_std"):
        super().__init__()
        if mode not in ("mean_std", "min_max"):
            raise ValueError(f"unknown normalisation mode {mode!r}")
        self.mode = mode
        self.keys = sorted(stats)
        for i, key in enumerate(self.keys):
            s = stats[key]
            if mode == "mean_std":
                shift, scale = np.asarray(s["mean"]), np.maximum(np.asarray(s["std"]), _EPS)
            else:  # to [-1, 1]
                lo, hi = np.asarray(s["min"]), np.asarray(s["max"])
                shift, scale = (hi + lo) / 2, np.maximum((hi - lo) / 2, _EPS)
            self.register_buffer(f"shift_{i}", torch.as_tensor(shift, dtype=torch.float32))
            self.register_buffer(f"scale_{i}", torch.as_tensor(scale, dtype=torch.float32))

    def _get(self, key: str) -> tuple[Tensor, Tensor] | None:
        if key not in self.keys:
            return None
        i = self.keys.index(key)
        return getattr(self, f"shift_{i}"), getattr(self, f"scale_{i}")

    def normalize(self, key: str, x: Tensor) -> Tensor:
        p = self._get(key)
        if p is None:
            return x
        shift, scale = p
        if x.shape[-1] != shift.shape[-1]:
            raise ShapeError(f"'{key}': last dim {x.shape[-1]}, normaliser stats have {shift.shape[-1]}")
        return (x - shift) / scale

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        p = self._get(key)
        if p is None:
            return x
        shift, scale = p
        return x * scale + shift
