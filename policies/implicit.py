"""Implicit log-likelihood of a generative chunk policy, at caller-given (t, eps) draws.

Both heads give a per-sample surrogate log-likelihood: minus the denoising error at a
draw (t, eps). Comparing two models (policy and frozen reference in AWM's penalty and
APO's log-ratio) only makes sense at the *same* draws; different draws swamp the
difference in noise. So the objectives draw (t, eps) once per step here and pass the
same tensors to every model they compare.

Shapes: D draws per sample, B batch, H chunk length, Da action size.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from vla.types import Batch, ChunkPolicy


def draw_noise_and_time(
    policy: ChunkPolicy, batch_size: int, n_draws: int = 1, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """noise (D, B, H, Da) ~ N(0, I) and t (D, B) in [0, 1].

    t follows the policy's own training distribution (``policy.sample_time``, e.g. the flow
    head's Beta), so the objectives reweight the pre-training loss itself.
    """
    H, Da = policy.chunk_len, policy.action_dim
    noise = torch.randn(n_draws, batch_size, H, Da, device=device)
    t = unwrap(policy).sample_time(n_draws * batch_size, device).reshape(n_draws, batch_size)
    return noise, t


@contextmanager
def eval_mode(module):
    """Dropout and training-time augmentation off (gradients still flow).

    The implicit log-ratio compares the policy with a reference in eval mode; both must
    be the same deterministic function of (batch, t, eps) for r to be 0 at the start.
    """
    was_training = getattr(module, "training", False)
    if hasattr(module, "eval"):
        module.eval()
    try:
        yield module
    finally:
        if hasattr(module, "train"):
            module.train(was_training)


def per_sample_loss(policy: ChunkPolicy, batch: Batch, noise: Tensor, t: Tensor) -> Tensor:
    """Mean over the D draws of the policy's per-sample loss: (B,).

    noise (D, B, H, Da), t (D, B). One call per draw keeps the batch untouched (images,
    task strings); D is small.
    """
    losses = [policy.loss(batch, reduction="none", noise=noise[d], t=t[d]) for d in range(noise.shape[0])]
    return torch.stack(losses).mean(0)


def logp_scale(policy: ChunkPolicy) -> float:
    """Factor from a per-element mean loss to a log-likelihood-like sum over the chunk.

    A Gaussian log-likelihood sums over the H x Da elements while the heads' losses
    average over them; the sum keeps KTO-style sigmoids out of their flat middle.
    """
    return float(policy.chunk_len * policy.action_dim)


def shift_actions(batch: Batch, shift: int = 1) -> Batch:
    """The batch with each observation paired with another sample's action chunk.

    Sample i gets the chunk of sample (i + shift) mod B: the "mismatched pairs" that
    KTO/APO use to estimate the reference point.
    """
    out = dict(batch)
    for key in ("action", "action_is_pad", "action_loss_mask"):
        if key in batch:
            out[key] = torch.roll(batch[key], shifts=-shift, dims=0)
    return out


def one_actor_chunks(batch: Batch) -> Batch:
    """The batch with each recorded chunk cut where its actor changes: a chunk that starts with
    the policy's steps and runs into a takeover, or the intervener's chunk that runs past the
    hand-back, is nobody's action as a whole. The steps from the first change on leave the loss
    (``action_loss_mask``, and marked as padding for LeRobot policies), as HG-DAgger does with
    the human's chunks. Batches without the per-step ``intervention`` column are returned as they are.
    """
    iv = batch.get("intervention")
    if iv is None or iv.dim() != 2:
        return batch
    iv = iv.bool()
    switched = (iv != iv[:, :1]).cumsum(1) > 0  # (B, H): from the first change of actor on
    pad = batch.get("action_is_pad")
    pad = torch.zeros_like(switched) if pad is None else pad.bool().to(switched.device)
    keep = batch.get("action_loss_mask")
    keep = ~switched if keep is None else keep.bool().to(switched.device) & ~switched
    return {**batch, "action_is_pad": pad | switched, "action_loss_mask": keep}


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode without gradients: the reference (or trailing) policy."""
    ref = copy.deepcopy(module).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def unwrap(model: nn.Module) -> nn.Module:
    """The policy inside a DistributedDataParallel-style wrapper (accelerate)."""
    return getattr(model, "module", model)


def follow_device(module: nn.Module, like: nn.Module) -> None:
    """Move ``module`` to ``like``'s device (the trainer moves the policy after the objective is built)."""
    p_like = next(like.parameters(), None)
    p_mod = next(module.parameters(), None)
    if p_like is not None and p_mod is not None and p_mod.device != p_like.device:
        module.to(p_like.device)
