"""APO: action preference optimisation from interventions (KTO-style, continuous heads).

Labels, per frame, from what the data layer records (``vla.data.ChunkDataset``):
- desirable "human": the intervener was in control (``label.human``), its corrective steps;
- desirable "correct": autonomous steps of successful episodes, and demonstrations;
- undesirable: the policy's own K steps just before a takeover (``label.pre_takeover``);
- the rest (autonomous steps of failed episodes outside those windows) is unlabelled
  and left out. ``autonomous`` says which autonomous steps count as "correct":
  ``successful`` (the default, above), ``all`` (failed episodes' too, as the paper's
  relabelling does) or ``none`` (only demonstrations: the policy's own actions are never
  imitated, only pushed away from before a takeover).

Loss, per labelled sample, with the implicit reward r = l_theta(a|s) - l_ref(a|s) at
shared (t, eps) draws (l = -loss x H x Da, see ``policies.implicit``):
- reference point z0 = clamp(mean r over mismatched pairs, -5, 5), no gradient: each
  observation paired with the next sample's action chunk (a batch shifted by one);
- desirable ``1 - sigmoid(beta (r - z0))``, undesirable ``1 - sigmoid(beta (z0 - r))``;
- adaptive weights from the policy's current action error (L1 of its greedy chunk,
  sampled from zero noise, against the recorded one), normalised within the sample's
  group: desirable ``1 - exp(-w)`` (more weight where the policy is still wrong),
  undesirable ``exp(-w)`` (more weight where it still acts like the bad action).
  The released code normalises by the group's *sum* (w sums to 1), which makes the
  desirable weights shrink with the batch size; by default we normalise by the group's
  *mean* (w averages 1); ``adaptive_norm=sum`` gives the released behaviour.
Batches are stratified by group (``StratifiedSampler``, [50/25/25] correct/human/undesirable).

Shapes: B batch, H chunk length, Da action size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from policies.implicit import (
    draw_noise_and_time,
    eval_mode,
    follow_device,
    frozen_copy,
    logp_scale,
    one_actor_chunks,
    per_sample_loss,
    shift_actions,
    unwrap,
)
from vla.errors import ConfigError, DataError
from vla.types import SOURCE_DEMO, Batch, require_generative

log = logging.getLogger(__name__)

UNLABELLED, CORRECT, HUMAN, UNDESIRABLE = -1, 0, 1, 2
GROUP_NAMES = ("correct", "human", "undesirable")
ERROR_MODES = ("sample", "loss")
NORMS = ("mean", "sum")
AUTONOMOUS = ("successful", "all", "none")


@dataclass
class APOConfig:
    beta: float = 0.1  # KTO's sharpness on the implicit reward
    ratios: tuple[float, float, float] = (0.5, 0.25, 0.25)  # batch shares: correct, human, undesirable
    z0_clip: float = 5.0  # the reference point is clamped to [-z0_clip, z0_clip]
    desirable_weight: float = 1.0  # KTO's lambda_D
    undesirable_weight: float = 1.0  # KTO's lambda_U
    adaptive: bool = True  # adaptive per-sample weights from the action error
    adaptive_error: str = "sample"  # "sample": L1 of the greedy chunk; "loss": the denoising loss
    adaptive_norm: str = "mean"  # within-group normalisation: "mean" (w averages 1) | "sum" (released)
    n_draws: int = 1  # (t, eps) draws per sample, averaged
    bc_weight: float = 1.0  # plain denoising loss on the desirable samples (0: KTO alone)
    one_actor: bool = True  # cut recorded chunks where the actor changes (policy <-> intervener)
    autonomous: str = "successful"  # autonomous steps labelled desirable: "successful" episodes' | "all" | "none"

    @classmethod
    def from_dict(cls, d: dict | None) -> APOConfig:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"name"})
        if unknown:
            raise ConfigError(f"algo=apo: unknown option(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        cfg.ratios = tuple(float(r) for r in cfg.ratios)
        cfg.check()
        return cfg

    def check(self) -> None:
        if len(self.ratios) != 3 or min(self.ratios) < 0 or sum(self.ratios) <= 0:
            raise ConfigError(f"algo.ratios={list(self.ratios)}: expected 3 shares >= 0 (correct, human, undesirable)")
        if self.adaptive_error not in ERROR_MODES:
            raise ConfigError(f"algo.adaptive_error={self.adaptive_error!r}: expected one of {ERROR_MODES}")
        if self.adaptive_norm not in NORMS:
            raise ConfigError(f"algo.adaptive_norm={self.adaptive_norm!r}: expected one of {NORMS}")
        if self.autonomous not in AUTONOMOUS:
            raise ConfigError(f"algo.autonomous={self.autonomous!r}: expected one of {AUTONOMOUS}")
        if self.beta <= 0 or self.n_draws < 1:
            raise ConfigError(f"algo: beta must be > 0 and n_draws >= 1 (got {self.beta}, {self.n_draws})")


# -- labels ------------------------------------------------------------------------------
def desirability_groups(human, pre_takeover, success, is_demo, autonomous: str = "successful"):
    """Group code per frame: CORRECT, HUMAN, UNDESIRABLE or UNLABELLED.

    Takes boolean numpy arrays or torch tensors of one shape (the ops are the same).
    """
    undesirable = pre_takeover
    human_ok = human & ~pre_takeover
    auto_ok = ~human & ~pre_takeover
    if autonomous == "successful":
        auto_ok = auto_ok & (success | is_demo)
    elif autonomous == "none":
        auto_ok = auto_ok & is_demo
    elif autonomous != "all":
        raise ConfigError(f"autonomous={autonomous!r}: expected one of {AUTONOMOUS}")
    unlabelled = ~(undesirable | human_ok | auto_ok)
    return CORRECT * auto_ok + HUMAN * human_ok + UNDESIRABLE * undesirable + UNLABELLED * unlabelled


def batch_groups(batch: Batch, autonomous: str = "successful") -> Tensor:
    """(B,) long group codes of a training batch."""
    for key in ("label.human", "label.pre_takeover", "episode_success", "source"):
        if key not in batch:
            raise DataError(f"APO needs '{key}' in the batch (use vla.data.ChunkDataset)")
    human = batch["label.human"].bool()
    is_demo = torch.tensor([s == SOURCE_DEMO for s in batch["source"]], device=human.device)
    return desirability_groups(
        human, batch["label.pre_takeover"].bool(), batch["episode_success"].bool(), is_demo,
        autonomous,
    ).long()


def dataset_groups(frames: dict, autonomous: str = "successful") -> np.ndarray:
    """(N,) group codes of every frame of a ChunkDataset (its ``frames`` columns)."""
    is_demo = np.asarray([s == SOURCE_DEMO for s in frames["source"]], dtype=bool)
    return np.asarray(desirability_groups(
        np.asarray(frames["label.human"], bool), np.asarray(frames["label.pre_takeover"], bool),
        np.asarray(frames["episode_success"], bool), is_demo, autonomous,
    ), dtype=np.int64)


# -- loss arithmetic ---------------------------------------------------------------------
def reference_point(r_mismatched: Tensor, clip: float = 5.0) -> Tensor:
    """KTO's z0: the mean implicit reward of mismatched pairs, clamped, without gradient."""
    return r_mismatched.detach().mean().clamp(-clip, clip)


def kto_losses(r: Tensor, desirable: Tensor, z0: Tensor, beta: float = 0.1) -> Tensor:
    """(B,) per-sample KTO losses."""
    return torch.where(desirable, 1 - torch.sigmoid(beta * (r - z0)), 1 - torch.sigmoid(beta * (z0 - r)))


def adaptive_weights(err: Tensor, groups: Tensor, norm: str = "mean", eps: float = 1e-4) -> Tensor:
    """(B,) weights: the error normalised within each group, then 1 - exp(-w) or exp(-w).

    Unlabelled samples get 0.
    """
    w = torch.zeros_like(err)
    for g in (CORRECT, HUMAN, UNDESIRABLE):
        m = groups == g
        if m.any():
            e = err[m]
            share = (e + eps) / (e.sum() + eps)
            w[m] = share * m.sum() if norm == "mean" else share
    weights = torch.where(groups == UNDESIRABLE, torch.exp(-w), 1 - torch.exp(-w))
    return torch.where(groups == UNLABELLED, torch.zeros_like(weights), weights)


@torch.no_grad()
def greedy_action_error(policy, batch: Batch) -> Tensor:
    """(B,) mean L1 between the policy's chunk from zero noise and the recorded chunk (valid steps)."""
    B, H, Da = batch["action"].shape
    noise = torch.zeros(B, 1, H, Da, device=batch["action"].device)
    pred = policy.sample(policy.encode(batch), n=1, noise=noise)[:, 0]  # (B, H, Da)
    err = (pred - batch["action"]).abs().mean(-1)  # (B, H)
    valid = ~batch["action_is_pad"] if "action_is_pad" in batch else torch.ones_like(err, dtype=torch.bool)
    return (err * valid).sum(1) / valid.sum(1).clamp(min=1)


class APOLoss:
    """``loss_fn(model, batch) -> (loss, logs)`` for the trainer."""

    def __init__(self, policy: nn.Module, cfg: APOConfig | dict | None = None, reference: nn.Module | None = None):
        require_generative(unwrap(policy), "APO (algo=apo)")
        self.cfg = cfg if isinstance(cfg, APOConfig) else APOConfig.from_dict(cfg)
        self.reference = reference if reference is not None else frozen_copy(unwrap(policy))

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict]:
        policy, cfg = unwrap(model), self.cfg
        follow_device(self.reference, policy)
        if cfg.one_actor:
            batch = one_actor_chunks(batch)
        groups = batch_groups(batch, cfg.autonomous)
        labelled = groups != UNLABELLED
        if not labelled.any():
            raise DataError("APO: a batch without labelled samples (use the stratified sampler)")
        desirable = labelled & (groups != UNDESIRABLE)
        B = groups.shape[0]

        noise, t = draw_noise_and_time(policy, B, cfg.n_draws, batch["action"].device)  # shared draws
        scale = logp_scale(policy)
        with eval_mode(policy):
            loss_pi = per_sample_loss(policy, batch, noise, t)  # (B,)
            with torch.no_grad():
                loss_ref = per_sample_loss(self.reference, batch, noise, t)
                mismatched = shift_actions(batch)
                r_mis = scale * (per_sample_loss(self.reference, mismatched, noise, t)
                                 - per_sample_loss(policy, mismatched, noise, t))
        z0 = reference_point(r_mis, cfg.z0_clip)
        r = scale * (loss_ref - loss_pi)
        kto = kto_losses(r, desirable, z0, cfg.beta)
        kto = kto * torch.where(desirable, cfg.desirable_weight, cfg.undesirable_weight)

        if cfg.adaptive:
            if cfg.adaptive_error == "sample":
                with eval_mode(policy):
                    err = greedy_action_error(policy, batch)
            else:
                err = loss_pi.detach()
            weights = adaptive_weights(err, groups, cfg.adaptive_norm)
        else:
            weights = labelled.float()
        total = (weights * kto).sum() / labelled.sum()
        if cfg.bc_weight > 0 and desirable.any():
            total = total + cfg.bc_weight * loss_pi[desirable].mean()

        logs = {"apo/loss": total.detach(), "apo/z0": z0.detach(), "apo/loss_policy": loss_pi.mean().detach()}
        for g, name in enumerate(GROUP_NAMES):
            m = groups == g
            logs[f"apo/frac_{name}"] = m.float().mean().detach()
            if m.any():
                logs[f"apo/reward_{name}"] = r[m].mean().detach()
                logs[f"apo/weight_{name}"] = weights[m].mean().detach()
        return total, logs


# -- stratified batches ------------------------------------------------------------------
def split_counts(batch_size: int, ratios: Sequence[float]) -> list[int]:
    """Per-group counts summing to batch_size, in the given proportions (largest remainder)."""
    r = np.asarray(ratios, dtype=np.float64)
    if r.sum() <= 0:
        raise DataError("stratified sampling: every group with a share is empty")
    exact = r / r.sum() * batch_size
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: batch_size - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


class StratifiedSampler(Sampler[int]):
    """Indices whose consecutive ``batch_size`` blocks hold each group in fixed proportions.

    Use with ``DataLoader(batch_size=batch_size, sampler=..., shuffle=False, drop_last=True)``
    or as the ``vla.train.Trainer`` sampler with the same batch size. Each group is drawn
    without replacement and reshuffled when exhausted (small groups repeat). A group with
    no frames gives its share to the others (a warning says so). An epoch is
    ``num_batches`` batches (default: the labelled frames once); its order is a function of
    (seed, epoch): ``set_epoch`` picks the epoch, otherwise each pass moves to the next.
    """

    def __init__(self, groups: np.ndarray, ratios: Sequence[float], batch_size: int,
                 num_batches: int | None = None, seed: int = 0):
        groups = np.asarray(groups)
        self.pools = [np.flatnonzero(groups == g) for g in range(len(ratios))]
        shares = [r if len(p) else 0.0 for r, p in zip(ratios, self.pools, strict=True)]
        for name, r, p in zip(GROUP_NAMES, ratios, self.pools, strict=False):
            if r > 0 and not len(p):
                log.warning("stratified sampling: no '%s' frames; their share goes to the other groups", name)
        self.counts = split_counts(batch_size, shares)
        self.batch_size = batch_size
        labelled = sum(len(p) for p, c in zip(self.pools, self.counts, strict=True) if c)
        self.num_batches = num_batches or max(1, -(-labelled // batch_size))
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        streams = [_cycle(pool, rng) for pool in self.pools]
        for _ in range(self.num_batches):
            idx = np.concatenate([[next(s) for _ in range(c)] for s, c in zip(streams, self.counts, strict=True)])
            # mixed order, so that the shifted (mismatched) pairs cross groups
            yield from rng.permutation(idx.astype(np.int64)).tolist()


def _cycle(pool: np.ndarray, rng: np.random.Generator):
    while len(pool):
        yield from rng.permutation(pool).tolist()


__all__ = [
    "APOConfig", "APOLoss", "StratifiedSampler", "adaptive_weights", "batch_groups", "dataset_groups",
    "desirability_groups", "greedy_action_error", "kto_losses", "reference_point", "split_counts",
    "CORRECT", "HUMAN", "UNDESIRABLE", "UNLABELLED",
]
