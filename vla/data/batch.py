"""Env observations (numpy, one step) to model batches (torch), in the dataset's layout."""

from __future__ import annotations

import numpy as np
import torch

from vla.errors import DataError
from vla.types import IMAGE_PREFIX, STATE, TASK, Batch


def obs_to_batch(observations: list[dict] | dict, device: torch.device | str = "cpu") -> Batch:
    """A list of env observations -> batch: state (B, Ds), images (B, 3, H, W) in [0, 1], task list."""
    if isinstance(observations, dict):
        observations = [observations]
    if not observations:
        raise DataError("obs_to_batch: no observations")
    batch: Batch = {TASK: [str(o.get(TASK, "")) for o in observations]}
    for key in observations[0]:
        if key == STATE:
            batch[key] = torch.as_tensor(np.stack([o[key] for o in observations]), dtype=torch.float32)
        elif key.startswith(IMAGE_PREFIX):
            imgs = np.stack([o[key] for o in observations])  # (B, H, W, 3) uint8
            batch[key] = torch.as_tensor(imgs).permute(0, 3, 1, 2).float().div_(255.0)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
