"""VLAPolicy: the VLA network (vla.model) with a flow or diffusion head, as a ChunkPolicy.

It takes RAW batches (dataset/obs_to_batch layout) and returns RAW actions; the mean/std
normalisation of state and action lives inside (a vla.data.Normalizer saved with it).

    policy = build_policy(cfg, features, stats)        # cfg: configs/policy/*.yaml as a dict
    ctx = policy.encode(obs)                           # once per observation: prefix + its K/V
    chunks = policy.sample(ctx, n=16)                  # (B, 16, H, Da), one batched expert pass per step
    loss = policy.loss(batch, reduction="none", noise=eps, t=t)   # (B,), deterministic in eval mode

Shapes: B batch, N candidates, H chunk length, Da action size, T prefix tokens, D width.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from policies.diffusion import DiffusionConfig, DiffusionHead
from policies.flow import FlowConfig, FlowHead
from vla.checkpoint import read_json
from vla.data.stats import Normalizer, load_stats, save_stats
from vla.errors import CheckpointError, ConfigError, DataError, ShapeError, VLAError
from vla.model import ActionExpert, ModelConfig, ObservationEncoder, canonical_features
from vla.model.config import from_dict, to_plain
from vla.types import ACTION, STATE, Batch, to_device

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass
class PolicyConfig:
    type: str = "vla"
    head: str = "flow"  # "flow" or "diffusion": one network, the head chosen here
    chunk_len: int = 16  # H
    execute_steps: int = 8  # a hint for agents: actions executed per chunk before re-planning
    observation_keys: list[str] | None = None  # None: the state and every camera of the features
    # Steps of a chunk past its episode's end (action_is_pad) hold the last action: learn them
    # (the policy learns to stay put once done, and a chunk drawn near an episode's end ends
    # somewhere sensible), or leave them out of the loss (false; untrained, they can be anything).
    hold_after_end: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    features: dict | None = None  # {key: shape}, filled in by build_policy


@dataclass
class VLAContext:
    """What ``encode`` computes once per observation and ``sample`` reuses."""

    tokens: Tensor  # (B, T, D) prefix tokens (e.g. for a value-query head)
    mask: Tensor  # (B, T) bool, True at real tokens
    pooled: Tensor  # (B, D)
    kv: list[tuple[Tensor, Tensor]]  # per expert layer: prefix keys, values (B, heads, T, D/heads)

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]


def _forward_fill_pad(a: Tensor, pad: Tensor) -> Tensor:
    """Replace padded steps of a (B, H, Da) by the last real step before them.

    The data layer already repeats an episode's last action past its end; filling here makes
    the loss independent of what a caller's padded steps hold (they reach the network's input
    through attention across the chunk, and the loss when ``hold_after_end``).
    """
    pos = torch.arange(a.shape[1], device=a.device).expand_as(pad)
    last = torch.where(pad, torch.full_like(pos, -1), pos).cummax(dim=1).values.clamp_min(0)
    return a.gather(1, last[..., None].expand_as(a))


def _plain_stats(stats: dict, key: str, dim: int) -> dict[str, list[float]]:
    s = stats.get(key) if stats else None
    if not s or "mean" not in s or "std" not in s:
        raise DataError(f"normalisation stats lack mean/std for '{key}'")
    out = {
        k: np.asarray(v.cpu() if isinstance(v, Tensor) else v, dtype=np.float64).reshape(-1).tolist()
        for k, v in s.items()
    }
    if len(out["mean"]) != dim:
        raise ShapeError(f"stats for '{key}' have {len(out['mean'])} dims, the feature has {dim}")
    return out


class VLAPolicy(nn.Module):
    def __init__(self, config: dict, stats: dict):
        super().__init__()
        cfg = from_dict(PolicyConfig, config)
        if cfg.type != "vla":
            raise ConfigError(f"policy.type must be 'vla' for VLAPolicy, got {cfg.type!r}")
        if not cfg.features or ACTION not in cfg.features:
            raise ConfigError("policy config has no features with an 'action' entry (use build_policy)")
        if cfg.head == "flow":
            self.head = FlowHead(cfg.flow)
        elif cfg.head == "diffusion":
            self.head = DiffusionHead(cfg.diffusion)
        else:
            raise ConfigError(f"policy.head must be 'flow' or 'diffusion', got {cfg.head!r}")
        self.cfg = cfg
        self.chunk_len = int(cfg.chunk_len)
        self.action_dim = int(cfg.features[ACTION][0])
        self.encoder = ObservationEncoder(cfg.model, cfg.features)
        self.expert = ActionExpert(cfg.model, self.action_dim, self.chunk_len)
        keys = {ACTION: self.action_dim}
        if self.encoder.state_dim is not None:
            keys[STATE] = self.encoder.state_dim
        self.stats = {k: _plain_stats(stats, k, d) for k, d in keys.items()}
        self.normalizer = Normalizer(self.stats)

    # --- the ChunkPolicy interface -----------------------------------------------------------
    @property
    def config(self) -> dict:
        return to_plain(self.cfg)

    @property
    def device(self) -> torch.device:
        return self.expert.pos.device

    generative = True  # flow and diffusion heads sample from caller-given noise, init and t_start

    def __str__(self) -> str:
        return f"the VLA {self.cfg.head} policy"

    @property
    def execute_steps(self) -> int:
        return min(int(self.cfg.execute_steps), self.chunk_len)

    @property
    def features(self) -> dict[str, tuple[int, ...]]:
        return {**self.encoder.features, ACTION: (self.action_dim,)}

    def sample_time(self, batch_size: int, device) -> Tensor:
        return self.head.sample_time(batch_size, device)

    def encode(self, obs: Batch) -> VLAContext:
        """Prefix tokens and their per-layer expert K/V for a raw observation batch."""
        self.encoder.check_batch(obs)
        obs = to_device(obs, self.device)
        if STATE in self.encoder.features:
            obs = {**obs, STATE: self.normalizer.normalize(STATE, obs[STATE].float())}
        prefix = self.encoder(obs)
        return VLAContext(prefix.tokens, prefix.mask, prefix.pooled, self.expert.prefix_kv(prefix.tokens))

    @torch.no_grad()
    def sample(
        self,
        ctx: VLAContext,
        n: int = 1,
        noise: Tensor | None = None,
        init: Tensor | None = None,
        t_start: float = 1.0,
        use_cache: bool = True,
    ) -> Tensor:
        """Raw action chunks (B, N, H, Da), all candidates in one batched expert pass per step.

        noise (B, N, H, Da): the starting noise (drawn if None), for reproducibility.
        init (B, N, H, Da), t_start in (0, 1]: start from ``init`` (raw) noised to t_start
        instead of pure noise (e.g. a dual system refining a chosen chunk); without ``init``,
        t_start < 1 starts from the normalised zero chunk noised to t_start.
        use_cache=False re-projects the prefix at every step (reference path, for tests/benchmarks).
        """
        B, H, Da = ctx.batch_size, self.chunk_len, self.action_dim
        if noise is None:
            noise = torch.randn(B, n, H, Da, device=self.device)
        if tuple(noise.shape) != (B, n, H, Da):
            raise ShapeError(
                f"sample noise has shape {tuple(noise.shape)}, expected (B, N, H, Da) = {(B, n, H, Da)}"
            )
        x = noise.to(self.device, torch.float32).reshape(B * n, H, Da)
        if not 0.0 < t_start <= 1.0:
            raise ConfigError(f"sample: t_start must be in (0, 1], got {t_start}")
        if init is not None:
            if tuple(init.shape) != (B, n, H, Da):
                raise ShapeError(f"sample init has shape {tuple(init.shape)}, expected {(B, n, H, Da)}")
            a0 = self.normalizer.normalize(ACTION, init.to(self.device, torch.float32)).reshape(B * n, H, Da)
            x = self.head.renoise(a0, x, t_start)
        elif t_start < 1.0:
            x = self.head.renoise(torch.zeros_like(x), x, t_start)

        if use_cache:
            kv, mask = self.expert.repeat_kv(ctx.kv, ctx.mask, n)

            def fn(x_t, t):
                return self.expert(x_t, t, kv, mask)
        else:
            tokens, mask = ctx.tokens.repeat_interleave(n, 0), ctx.mask.repeat_interleave(n, 0)

            def fn(x_t, t):
                return self.expert(x_t, t, self.expert.prefix_kv(tokens), mask)

        a = self.head.denoise(fn, x, t_start)
        return self.normalizer.unnormalize(ACTION, a).view(B, n, H, Da)

    def loss(
        self, batch: Batch, reduction: str = "mean", noise: Tensor | None = None, t: Tensor | None = None
    ) -> Tensor:
        """Denoising loss in the normalised action space; (B,) with reduction='none'.

        noise (B, H, Da) and t (B,) in [0, 1] may be given so that two models (policy and a
        frozen reference) are compared at the same draws. Steps past the episode's end
        (action_is_pad) hold the last action and are learnt when ``hold_after_end`` (else left
        out); steps where the batch's ``action_loss_mask`` is False are always left out. For the
        diffusion head t maps to a DDPM timestep (see policies/diffusion.py).
        """
        if reduction not in ("mean", "sum", "none"):
            raise ConfigError(f"loss reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        a = batch.get(ACTION)
        if a is None:
            raise DataError("loss needs 'action' in the batch")
        B, H, Da = a.shape[0], self.chunk_len, self.action_dim
        if tuple(a.shape) != (B, H, Da):
            raise ShapeError(f"batch 'action' has shape {tuple(a.shape)}, the policy expects (B, {H}, {Da})")
        pad = batch.get("action_is_pad")
        pad = torch.zeros(B, H, dtype=torch.bool) if pad is None else pad.bool()
        if tuple(pad.shape) != (B, H):
            raise ShapeError(f"batch 'action_is_pad' has shape {tuple(pad.shape)}, expected {(B, H)}")
        dev = self.device
        a, pad = a.to(dev, torch.float32), pad.to(dev)
        a = _forward_fill_pad(self.normalizer.normalize(ACTION, a), pad)
        noise = torch.randn_like(a) if noise is None else noise.to(dev, torch.float32)
        t = self.head.sample_time(B, dev) if t is None else t.to(dev, torch.float32)
        if tuple(noise.shape) != (B, H, Da) or tuple(t.shape) != (B,):
            raise ShapeError(
                f"loss noise {tuple(noise.shape)} / t {tuple(t.shape)}: expected {(B, H, Da)} / ({B},)"
            )

        ctx = self.encode(batch)
        x_t, net_t = self.head.noisy(a, noise, t)
        err = (self.expert(x_t, net_t, ctx.kv, ctx.mask) - self.head.target(a, noise, t)).pow(2)
        keep = batch.get("action_loss_mask")
        keep = torch.ones_like(pad) if keep is None else keep.to(dev).bool()
        if not self.cfg.hold_after_end:
            keep = keep & ~pad
        valid = keep.to(err.dtype)[..., None]  # (B, H, 1)
        per_sample = (err * valid).sum((1, 2)) / (valid.sum((1, 2)) * Da).clamp_min(1.0)
        if reduction == "none":
            return per_sample
        return per_sample.mean() if reduction == "mean" else per_sample.sum()

    # --- compatibility, save, load -------------------------------------------------------------
    def check_compatible(self, features: dict, where: str = "the dataset") -> None:
        """ShapeError naming the feature if ``features`` (dataset or env) disagree with the policy."""
        have = canonical_features(features)
        for key, shape in self.encoder.features.items():
            if key not in have:
                raise ShapeError(f"the policy needs {key} {shape}, {where} has no such feature")
            if have[key] != shape:
                raise ShapeError(f"{key}: the policy expects {shape}, {where} has {have[key]}")
        if ACTION in features:
            act = features[ACTION]
            act = tuple(int(s) for s in (act["shape"] if isinstance(act, dict) else act))
            if act != (self.action_dim,):
                raise ShapeError(f"{ACTION}: the policy expects ({self.action_dim},), {where} has {act}")

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json, model.safetensors and stats.json; readers never see a partial folder."""
        final = Path(directory)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
        try:
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config, indent=2) + "\n")
            save_stats(self.stats, tmp)
            if final.exists():  # os.replace cannot land on a non-empty folder: swap it out
                old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-old-{final.name}-"))
                os.replace(final, old / final.name)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> VLAPolicy:
        path = Path(directory)
        if not path.is_dir():
            raise CheckpointError(f"no checkpoint folder at {path}")
        config = read_json(path / CONFIG_FILE)
        kind = config.get("type") if isinstance(config, dict) else None
        if kind != "vla":
            raise CheckpointError(f"{path} holds a checkpoint of type {kind!r}, not a VLA policy ('vla')")
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"missing checkpoint file {weights}")
        stats = load_stats(path)
        try:
            policy = cls(config, stats)
        except VLAError as e:
            raise CheckpointError(f"{path}: cannot build the policy from its config: {e}") from None
        try:
            state = load_file(str(weights))
        except Exception as e:  # safetensors raises its own types for truncated/corrupt files
            raise CheckpointError(f"{weights}: unreadable weights ({e})") from None
        _check_state(policy.state_dict(), state, weights)
        policy.load_state_dict(state)
        return policy.to(device).eval()

    def copy_frozen(self) -> VLAPolicy:
        """A frozen deep copy in eval mode (the reference model of AWM / APO)."""
        ref = copy.deepcopy(self).eval()
        ref.requires_grad_(False)
        return ref


def _check_state(expected: dict, got: dict, where: Path) -> None:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{where}: weights do not match the config's architecture "
            f"(missing {_few(missing)}, unexpected {_few(extra)})"
        )
    for k, v in expected.items():
        if tuple(got[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{where}: '{k}' has shape {tuple(got[k].shape)}, the config builds {tuple(v.shape)}"
            )


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "") if keys else "none"


def build_policy(cfg: dict, features: dict, stats: dict) -> VLAPolicy:
    """A fresh VLAPolicy for ``features`` ({key: shape}; extra keys are ignored) and dataset ``stats``."""
    pcfg = from_dict(PolicyConfig, cfg)
    if ACTION not in features:
        raise ShapeError("features lack 'action': cannot size the policy's output")
    act = features[ACTION]
    act = [int(s) for s in (act["shape"] if isinstance(act, dict) else act)]
    if len(act) != 1:
        raise ShapeError(f"feature 'action' must be a vector (Da,), got {tuple(act)}")
    obs = canonical_features(features)
    if pcfg.observation_keys is not None:
        missing = [k for k in pcfg.observation_keys if k not in obs]
        if missing:
            raise ShapeError(
                f"policy.observation_keys names {missing[0]}, which the features lack (have {sorted(obs)})"
            )
        obs = {k: obs[k] for k in pcfg.observation_keys}
    pcfg.features = {**{k: list(v) for k, v in obs.items()}, ACTION: act}
    return VLAPolicy(to_plain(pcfg), stats)
