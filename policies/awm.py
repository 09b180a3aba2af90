"""AWM: advantage-weighted matching (post-training of a flow or diffusion policy).

The head's own pre-training loss, reweighted per sample by an advantage, plus a small
pull towards the frozen reference policy. Both models are evaluated at the *same*
(t, eps) draws (see ``policies.implicit``).

Advantages, per sample (raw, then normalised):
- with a critic (``critic_path``): A = agg_E Q(s, a_recorded) - mean_j agg_E Q(s, a_j),
  a_j ~ the *reference* policy, agg_E the critic's own (pessimistic) aggregation. A fixed critic was trained to evaluate the base policy,
  so Q and V of that same policy give its advantage; the critic's own
  ``advantage(batch, policy, n)`` is used where it has one.
- without a critic: the Monte-Carlo return ``mc_return`` with a *batch* baseline: the
  batch (or per-task) mean subtracted by the normalisation below; no learned value.

Normalisation (as in the paper): A = (R - mean R) / (std R + 1e-4) over the batch or per
task, clipped to [-clip, clip] and rescaled into [-1, 1]. Weights:
- ``signed``: w = A, sign included (on-policy data, as in the paper);
- ``exp``: w = min(exp(A / tau), w_max), advantage-weighted regression's weight, safe on
  off-policy data (a negative weight pushes likelihood away without bound).
With ``one_actor`` (the default) a recorded chunk counts only up to the step where its actor
changes (policy to intervener or back; ``policies.implicit.one_actor_chunks``). With
``interventions`` the labels of intervention data override the normalised advantage:
``positive`` gives the human's steps +1 (RECAP forces interventions positive), ``labels``
also gives the policy's own steps just before a takeover -1 (APO's undesirable set).

Regularisers, both on the implicit log-ratio r = l_theta - l_ref at shared draws
(l = -loss x H x Da, a Gaussian log-likelihood up to a constant):
- ``beta_ref * mean(r^2)`` towards the frozen reference (r^2 / 2 is the second-order
  KL between the two; zero, with zero gradient, at the start);
- optionally ``trust_beta * mean(r_trail^2)`` towards a trailing EMA copy of the policy,
  a moving trust region (``on_step`` updates the copy after each optimiser step).
Only the loss interface of ``ChunkPolicy`` is needed, so the VLA heads and the LeRobot
adapter are trained alike.

Shapes: B batch, N value samples, H chunk length, Da action size, E ensemble.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from policies.implicit import (
    draw_noise_and_time,
    eval_mode,
    follow_device,
    frozen_copy,
    logp_scale,
    one_actor_chunks,
    per_sample_loss,
    unwrap,
)
from vla.errors import ConfigError, DataError
from vla.types import Batch, require_generative

WEIGHTINGS = ("signed", "exp")
INTERVENTION_MODES = ("none", "positive", "labels")
GROUPINGS = ("batch", "task")
ADVANTAGE_SOURCES = ("auto", "critic", "mc")


@dataclass
class AWMConfig:
    weighting: str = "exp"  # "exp" (off-policy safe) | "signed" (on-policy, as in the paper)
    tau: float = 0.1  # temperature of the exp weight, on advantages in [-1, 1]
    w_max: float = 10.0  # cap of the exp weight
    clip: float = 5.0  # normalised advantages clipped to [-clip, clip], then divided by clip
    group_by: str = "batch"  # normalise over the "batch" or per "task"
    beta_ref: float = 0.0  # pull towards the frozen reference (on log-likelihood-scaled ratios; see the yaml)
    n_draws: int = 1  # (t, eps) draws per sample, averaged
    advantage: str = "auto"  # "critic" | "mc" | "auto" (the critic when one is given)
    value_samples: int = 4  # chunks a_j ~ reference for V(s) = mean_j Q(s, a_j)
    trust_beta: float = 0.0  # pull towards a trailing EMA copy (0: off)
    trust_decay: float = 0.99  # EMA decay of that copy, per step
    one_actor: bool = True  # cut recorded chunks where the actor changes (policy <-> intervener)
    interventions: str = "labels"  # "positive": human steps get the top advantage (RECAP) | "labels": also the
    #                              policy's steps before a takeover the bottom one | "none"

    @classmethod
    def from_dict(cls, d: dict | None) -> AWMConfig:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"name"})
        if unknown:
            raise ConfigError(f"algo=awm: unknown option(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        cfg.check()
        return cfg

    def check(self) -> None:
        for name, value, allowed in (
            ("weighting", self.weighting, WEIGHTINGS),
            ("group_by", self.group_by, GROUPINGS),
            ("advantage", self.advantage, ADVANTAGE_SOURCES),
            ("interventions", self.interventions, INTERVENTION_MODES),
        ):
            if value not in allowed:
                raise ConfigError(f"algo.{name}={value!r}: expected one of {allowed}")
        if self.tau <= 0 or self.w_max <= 0 or self.clip <= 0:
            raise ConfigError(f"algo: tau, w_max and clip must be > 0 (got {self.tau}, {self.w_max}, {self.clip})")
        if self.n_draws < 1 or self.value_samples < 1:
            raise ConfigError("algo: n_draws and value_samples must be >= 1")
        if not 0.0 <= self.trust_decay < 1.0:
            raise ConfigError(f"algo.trust_decay={self.trust_decay}: expected in [0, 1)")


def normalize_advantages(raw: Tensor, groups: list | None = None, clip: float = 5.0, eps: float = 1e-4) -> Tensor:
    """(B,) raw advantages -> (B,) in [-1, 1]: standardised per group, clipped, rescaled.

    ``groups`` (len B) gives each sample's group (e.g. its task string); None: one group.
    A group of one sample, or of equal values, gets 0.
    """
    keys = list(groups) if groups is not None else [0] * len(raw)
    if len(keys) != len(raw):
        raise DataError(f"normalize_advantages: {len(keys)} group labels for {len(raw)} advantages")
    out = torch.zeros_like(raw)
    for key in dict.fromkeys(keys):
        idx = torch.tensor([i for i, k in enumerate(keys) if k == key], device=raw.device)
        r = raw[idx]
        out[idx] = (r - r.mean()) / (r.std(unbiased=False) + eps)
    return out.clamp(-clip, clip) / clip


def intervention_advantages(adv: Tensor, batch: Batch, mode: str = "positive") -> Tensor:
    """Normalised advantages (B,) with the intervention labels imposed: the human's steps get the
    top of the range (+1), as RECAP forces interventions positive; with ``mode="labels"`` the
    policy's own steps just before a takeover (APO's undesirable set) also get the bottom (-1)."""
    if mode == "none":
        return adv
    if mode not in INTERVENTION_MODES:
        raise ConfigError(f"algo.interventions={mode!r}: expected one of {INTERVENTION_MODES}")
    if "label.human" not in batch or (mode == "labels" and "label.pre_takeover" not in batch):
        raise DataError(f"algo.interventions={mode} needs the intervention labels in the batch "
                        "(use vla.data.ChunkDataset)")
    adv = adv.masked_fill(batch["label.human"].to(adv.device).bool().reshape(-1), 1.0)
    if mode == "labels":
        pre = batch["label.pre_takeover"].to(adv.device).bool().reshape(-1)
        adv = adv.masked_fill(pre, -1.0)
    return adv


def advantage_weights(adv: Tensor, weighting: str = "exp", tau: float = 0.5, w_max: float = 10.0) -> Tensor:
    """Per-sample weights from normalised advantages (B,)."""
    if weighting == "signed":
        return adv
    if weighting == "exp":
        return torch.exp(adv / tau).clamp(max=w_max)
    raise ConfigError(f"algo.weighting={weighting!r}: expected one of {WEIGHTINGS}")


@torch.no_grad()
def critic_advantage(critic, batch: Batch, policy, n: int = 4) -> Tensor:
    """A = Q(s, a_recorded) - mean_j Q(s, a_j), a_j ~ policy: (B,).

    A critic of ours (``critics.ChunkCritic``) computes it with its own pessimistic
    ensemble aggregation (its ``agg`` config); any other ``Critic`` gets the ensemble mean.
    """
    if callable(getattr(critic, "advantage", None)):
        return critic.advantage(batch, policy, n=n)
    recorded = batch["action"][:, None]  # (B, 1, H, Da)
    q_data = critic.q(batch, recorded).mean(0)[:, 0]  # (B,)
    samples = policy.sample(policy.encode(batch), n=n)  # (B, N, H, Da)
    v = critic.q(batch, samples).mean(0).mean(1)  # (B,)
    return q_data - v


class AWMLoss:
    """``loss_fn(model, batch) -> (loss, logs)`` for the trainer; ``on_step(model)`` after each step."""

    def __init__(self, policy: nn.Module, cfg: AWMConfig | dict | None = None, critic=None,
                 reference: nn.Module | None = None):
        require_generative(unwrap(policy), "AWM (algo=awm)")
        self.cfg = cfg if isinstance(cfg, AWMConfig) else AWMConfig.from_dict(cfg)
        source = self.cfg.advantage
        if source == "critic" and critic is None:
            raise ConfigError("algo.advantage=critic needs critic_path=<checkpoint>")
        self.use_critic = critic is not None and source != "mc"
        self.critic = critic
        self.reference = reference if reference is not None else frozen_copy(unwrap(policy))
        self.trailing = frozen_copy(unwrap(policy)) if self.cfg.trust_beta > 0 else None

    def advantages(self, batch: Batch) -> Tensor:
        """Raw advantages (B,), before normalisation."""
        if self.use_critic:
            return critic_advantage(self.critic, batch, self.reference, self.cfg.value_samples)
        if "mc_return" not in batch:
            raise DataError("AWM without a critic needs 'mc_return' in the batch (use vla.data.ChunkDataset)")
        return batch["mc_return"].float()

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict]:
        policy, cfg = unwrap(model), self.cfg
        follow_device(self.reference, policy)
        if cfg.one_actor:
            batch = one_actor_chunks(batch)
        B = batch["action"].shape[0]
        raw = self.advantages(batch).detach().float()
        adv = normalize_advantages(raw, batch["task"] if cfg.group_by == "task" else None, cfg.clip)
        adv = intervention_advantages(adv, batch, cfg.interventions)
        w = advantage_weights(adv, cfg.weighting, cfg.tau, cfg.w_max)

        noise, t = draw_noise_and_time(policy, B, cfg.n_draws, batch["action"].device)  # shared draws
        with eval_mode(policy):
            loss_pi = per_sample_loss(policy, batch, noise, t)  # (B,)
        with torch.no_grad():
            loss_ref = per_sample_loss(self.reference, batch, noise, t)
        scale = logp_scale(policy)
        log_ratio = scale * (loss_ref - loss_pi)  # r = l_theta - l_ref
        weighted = (w * loss_pi).mean()
        ref_term = log_ratio.pow(2).mean()
        total = weighted + cfg.beta_ref * ref_term
        logs = {
            "awm/weighted_loss": weighted.detach(),
            "awm/ref_term": ref_term.detach(),
            "awm/loss_policy": loss_pi.mean().detach(),
            "awm/loss_ref": loss_ref.mean().detach(),
            "awm/adv_raw_mean": raw.mean().detach(),
            "awm/weight_mean": w.mean().detach(),
            "awm/weight_max": w.max().detach(),
            "awm/adv_clipped_frac": (adv.abs() >= 1.0).float().mean().detach(),
        }
        if self.trailing is not None:
            follow_device(self.trailing, policy)
            with torch.no_grad():
                loss_trail = per_sample_loss(self.trailing, batch, noise, t)
            trust = (scale * (loss_trail - loss_pi)).pow(2).mean()
            total = total + cfg.trust_beta * trust
            logs["awm/trust_term"] = trust.detach()
        return total, logs

    @torch.no_grad()
    def on_step(self, model: nn.Module) -> None:
        """Move the trailing copy towards the current weights (EMA)."""
        if self.trailing is None:
            return
        d = self.cfg.trust_decay
        for p_trail, p in zip(self.trailing.parameters(), unwrap(model).parameters(), strict=True):
            p_trail.lerp_(p.detach().to(p_trail.device), 1.0 - d)
