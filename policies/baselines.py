"""Baselines for post-training, on the same data and through the same script as AWM and APO.

- ``bc``: behaviour cloning on every frame (the head's own loss, unweighted);
- ``filtered_bc``: behaviour cloning on the frames of successful episodes only;
- ``hg_dagger``: HG-DAgger-style behaviour cloning on the demonstrations plus the
  human-corrected segments: frames where the intervener was in control, and inside
  their chunks only the steps the intervener executed (after a hand-back the chunk's
  remaining actions are the policy's own, so they are masked out like padding).

The baselines differ in *which* frames they learn from (``select_frames``, applied by
the data loader) and, for HG-DAgger, which chunk steps count (``BCLoss``).

Shapes: B batch, H chunk length.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from policies.implicit import one_actor_chunks, unwrap
from vla.errors import ConfigError, DataError
from vla.types import SOURCE_DEMO, Batch

BASELINES = ("bc", "filtered_bc", "hg_dagger")


def select_frames(algo: str, frames: dict) -> np.ndarray:
    """Indices of the frames a baseline learns from (``frames``: a ChunkDataset's columns)."""
    n = len(frames["action"])
    if algo == "bc":
        keep = np.ones(n, dtype=bool)
    elif algo == "filtered_bc":
        keep = np.asarray(frames["episode_success"], dtype=bool)
    elif algo == "hg_dagger":
        is_demo = np.asarray([s == SOURCE_DEMO for s in frames["source"]], dtype=bool)
        keep = is_demo | np.asarray(frames["label.human"], dtype=bool)
    else:
        raise ConfigError(f"algo={algo!r}: expected one of {BASELINES}")
    if not keep.any():
        what = {"filtered_bc": "successful episodes", "hg_dagger": "demonstrations or intervention steps"}
        raise DataError(f"algo={algo}: the data holds no {what.get(algo, 'frames')}")
    return np.flatnonzero(keep)


def human_steps_only(batch: Batch) -> Batch:
    """The batch with the non-human steps of non-demo chunks left out of the loss (and marked as
    padding, for LeRobot policies)."""
    for key in ("intervention", "source"):
        if key not in batch:
            raise DataError(f"hg_dagger needs '{key}' in the batch (use vla.data.ChunkDataset)")
    pad = batch.get("action_is_pad")
    if pad is None:
        pad = torch.zeros_like(batch["intervention"], dtype=torch.bool)
    is_demo = torch.tensor([s == SOURCE_DEMO for s in batch["source"]], device=pad.device)  # (B,)
    not_human = ~batch["intervention"].bool() & ~is_demo[:, None]  # (B, H)
    return {**batch, "action_is_pad": pad | not_human, "action_loss_mask": ~not_human}


class BCLoss:
    """``loss_fn(model, batch) -> (loss, logs)``: the head's mean loss (HG-DAgger: human steps only;
    BC and filtered BC: with ``one_actor``, each chunk only up to the step where its actor changes,
    as AWM and APO do by default)."""

    def __init__(self, algo: str = "bc", one_actor: bool = True):
        if algo not in BASELINES:
            raise ConfigError(f"algo={algo!r}: expected one of {BASELINES}")
        self.algo, self.one_actor = algo, bool(one_actor)

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict]:
        if self.algo == "hg_dagger":
            batch = human_steps_only(batch)
        elif self.one_actor:
            batch = one_actor_chunks(batch)
        loss = unwrap(model).loss(batch)
        return loss, {f"{self.algo}/loss": loss.detach()}
