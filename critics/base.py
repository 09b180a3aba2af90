"""What every critic shares: the chunk TD target, ensemble aggregation, target networks, checkpoints.

A critic is a Q ensemble over (observation, action chunk): ``q(obs, chunks (B, N, H, Da))
-> (E, B, N)``. It takes raw batches and raw chunks and normalises inside (the stats
travel with its weights). The objectives (ALOE, Cal-QL, IQL) subclass ``ChunkCritic``
and implement ``loss``.

Rewards come from the chunk dataset (``reward_mode``; V-GPS: -1 per step, 0 at success).
Episode ends inside a chunk: a successful episode is terminal (no bootstrap); a failed
one was cut by the time limit, so by default it bootstraps from its last frame
(``timeout_bootstrap``), and its Monte-Carlo return counts its last reward as going on
forever (Cal-QL's convention: a failed sparse-reward trajectory is worth r/(1 - gamma)).
Treating time-outs as terminal would make failures look like successes near their end
under the -1/0 reward.

Shapes: ``B`` batch, ``N`` candidates, ``H`` chunk length, ``Da`` action size, ``E`` ensemble.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from critics.nets import EncoderConfig, EnsembleMLP, ObsEncoder, VLAFeatures
from vla.checkpoint import MODEL_CONFIG, read_json, resolve_checkpoint
from vla.data.returns import episode_bounds, mc_returns
from vla.data.stats import Normalizer, load_stats, save_stats
from vla.errors import CheckpointError, ConfigError, ShapeError
from vla.model.config import from_dict, to_plain
from vla.types import ACTION, IMAGE_PREFIX, STATE, TASK, Batch, ChunkPolicy, image_keys

WEIGHTS = "model.safetensors"
AGGREGATIONS = ("mean", "min", "mean_std")
NEXT = "next."


@dataclass
class CriticConfig:
    type: str = "aloe"
    chunk_len: int = 4  # H the critic reads: the first H steps of a policy's chunk (1: single actions)
    gamma: float = 0.98
    reward_mode: str = "sparse_neg"  # ChunkDataset reward: "sparse_neg" (-1 per step, 0 at success) | "raw"
    timeout_bootstrap: bool = True  # failed episodes end by time-out: bootstrap there (see module doc)
    # RLIF (Luo et al. 2024): a cost on the policy's last step before each takeover (0: off),
    # so that Q also says whether a person would have let the chunk run. Measured in
    # benchmarks/results/critics_pick_place.json: better held-out ranking, no re-ranking gain.
    takeover_penalty: float = 0.0
    ensemble: int = 2  # E
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    tau: float = 0.005  # Polyak rate of the target networks, per step
    n_next: int = 4  # policy chunks drawn at s[t+H] and averaged in the bootstrap
    target_agg: str = "mean"  # over E in the TD target
    agg: str = "mean_std"  # pessimistic aggregation for values, advantages and re-ranking
    agg_k: float = 1.0  # mean_std: mean - agg_k * std over E
    # The heads predict Q / q_scale, so that their outputs stay near 1 (Adam moves a weight by
    # about lr per step: an output that had to grow to -50 would lag the TD targets by far).
    # None: 1 / (1 - gamma) for sparse_neg rewards (the value of never succeeding), else 1.
    q_scale: float | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self):
        for name in ("target_agg", "agg"):
            if getattr(self, name) not in AGGREGATIONS:
                raise ConfigError(f"critic.{name}={getattr(self, name)!r}: choose one of {AGGREGATIONS}")
        if self.chunk_len < 1 or self.ensemble < 1 or self.n_next < 1:
            raise ConfigError("critic.chunk_len, critic.ensemble and critic.n_next must be >= 1")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"critic.gamma={self.gamma} and critic.tau={self.tau} must lie in (0, 1]")
        if self.timeout_bootstrap and self.gamma >= 1.0:
            raise ConfigError("critic.timeout_bootstrap needs gamma < 1 (a failure is worth r / (1 - gamma))")
        if self.takeover_penalty < 0:
            raise ConfigError(f"critic.takeover_penalty={self.takeover_penalty} must be >= 0 (it is subtracted)")
        if self.q_scale is not None and self.q_scale <= 0:
            raise ConfigError(f"critic.q_scale={self.q_scale} must be > 0 (or null: automatic)")


# --- pure functions ---------------------------------------------------------------------------


def aggregate(q: Tensor, mode: str = "mean", k: float = 1.0) -> Tensor:
    """Reduce the ensemble axis: (E, ...) -> (...). ``mean_std`` = mean - k * spread; ``min``."""
    if mode == "mean":
        return q.mean(0)
    if mode == "min":
        return q.min(0).values
    if mode == "mean_std":
        return q.mean(0) - k * q.std(0, unbiased=False)
    raise ConfigError(f"unknown ensemble aggregation {mode!r}: choose one of {AGGREGATIONS}")


def chunk_td_target(rewards: Tensor, is_pad: Tensor, terminal: Tensor, v_next: Tensor, gamma: float) -> Tensor:
    """y = sum_{k<m} gamma^k r_k + gamma^m (1 - terminal) v_next, (B,).

    rewards, is_pad (B, H); terminal, v_next (B,). ``m`` counts the chunk's steps inside the
    episode: H normally, fewer when the episode ends inside the chunk (the sum stops there;
    a time-out bootstraps from the last frame after those m steps, a success does not).
    """
    H = rewards.shape[1]
    valid = (~is_pad).to(rewards.dtype)
    disc = gamma ** torch.arange(H, device=rewards.device, dtype=rewards.dtype)
    ret = (rewards * valid * disc).sum(1)
    m = valid.sum(1)
    return ret + gamma**m * (~terminal).to(rewards.dtype) * v_next


def calibration_returns(
    rewards: np.ndarray, episode: np.ndarray, success: np.ndarray, gamma: float, timeout_bootstrap: bool
) -> np.ndarray:
    """Per-frame Monte-Carlo return that matches the critic's backup (Cal-QL's lower bound).

    A failed episode that ended by time-out continues with its last reward forever; with the
    -1/0 reward that is -1/(1 - gamma) on every frame, as in Cal-QL's ``calc_return_to_go``.
    """
    mc = mc_returns(rewards, episode, gamma).astype(np.float64)
    if timeout_bootstrap:
        rewards = np.asarray(rewards, dtype=np.float64)
        for start, end in episode_bounds(episode):
            if not success[start]:
                steps_left = end - np.arange(start, end)
                mc[start:end] += gamma**steps_left * rewards[end - 1] / (1.0 - gamma)
    return mc.astype(np.float32)


def next_obs(batch: Batch) -> Batch:
    """The observation at t+H out of a chunk batch (``next.observation.*``), with the task."""
    obs = {k[len(NEXT):]: v for k, v in batch.items() if k.startswith(NEXT + "observation.")}
    obs[TASK] = batch[TASK]
    return obs


# --- the critic base --------------------------------------------------------------------------


class ChunkCritic(nn.Module):
    """Q ensemble over (observation features, flattened normalised chunk), with Polyak targets."""

    type_name = "base"
    config_cls = CriticConfig

    def __init__(self, cfg: CriticConfig, features: dict[str, tuple], stats: dict, policy: ChunkPolicy | None = None):
        """``policy`` (optional) seeds a ``vla`` encoder with the policy's encoder weights."""
        super().__init__()
        if ACTION not in features:
            raise ShapeError("critic features lack 'action'")
        self.cfg = cfg
        self.features = {k: tuple(int(s) for s in v) for k, v in features.items()}
        self.stats = stats
        self.action_dim = int(self.features[ACTION][-1])
        self.chunk_len = int(cfg.chunk_len)  # the first chunk_len steps of a policy's chunk are scored
        self.state_dim = int(self.features[STATE][-1]) if STATE in self.features else 0
        self.cameras = image_keys(self.features)
        self.normalizer = Normalizer(stats)
        auto_scale = 1.0 / (1.0 - cfg.gamma) if cfg.reward_mode == "sparse_neg" and cfg.gamma < 1 else 1.0
        self.q_scale = float(auto_scale if cfg.q_scale is None else cfg.q_scale)
        self.encoder, self.feature_dim = self.build_encoder(policy)
        self.heads = self.build_heads()
        self.target_encoder = self._frozen_copy(self.encoder)
        self.target_heads = self._frozen_copy(self.heads)

    # -- construction ------------------------------------------------------------------------
    def build_encoder(self, policy: ChunkPolicy | None) -> tuple[nn.Module | None, int]:
        """The observation encoder and its feature size F.

        ``vla``: a separate copy of the policy's observation encoder (same architecture,
        initialised from its weights). Separate because the critic's TD gradients must not
        move the features the policy acts on, and the critic must stay valid when the policy
        is fine-tuned later against it.
        """
        enc = self.cfg.encoder
        if enc.type == "mlp":
            return ObsEncoder(enc, self.state_dim, self.cameras), enc.dim
        if enc.type != "vla":
            raise ConfigError(f"critic.encoder.type={enc.type!r}: choose 'mlp' or 'vla'")
        source = getattr(policy, "encoder", None)
        if not isinstance(source, nn.Module) or not hasattr(source, "features"):
            source = None  # a policy without a VLA encoder (LeRobot adapter): start fresh
        if enc.model is None:
            enc.model = to_plain(source.cfg) if source is not None else {}
        if enc.observation_keys is None:
            keys = source.features if source is not None else self.features
            enc.observation_keys = sorted(k for k in keys if k == STATE or k.startswith(IMAGE_PREFIX))
        missing = [k for k in enc.observation_keys if k not in self.features]
        if missing:
            raise ShapeError(f"critic.encoder.observation_keys names {missing[0]}, which the data lacks")
        module = VLAFeatures(enc.model, {k: self.features[k] for k in enc.observation_keys}, enc.image_aug_pad)
        if enc.init_from_policy and source is not None:
            try:
                module.enc.load_state_dict(source.state_dict())
            except RuntimeError as e:
                raise ConfigError(f"critic.encoder: the policy's encoder does not fit the critic's copy: {e}") from None
        return module, module.dim

    def build_heads(self) -> nn.Module:
        d_in = self.feature_dim + self.cfg.chunk_len * self.action_dim
        return EnsembleMLP(self.cfg.ensemble, d_in, list(self.cfg.hidden), 1, self.cfg.activation)

    @staticmethod
    def _frozen_copy(module: nn.Module | None) -> nn.Module | None:
        if module is None:
            return None
        target = copy.deepcopy(module)
        for p in target.parameters():
            p.requires_grad_(False)
        return target

    # -- inputs ------------------------------------------------------------------------------
    def _obs(self, obs: Batch) -> Batch:
        out = {TASK: obs[TASK]} if TASK in obs else {}
        if self.state_dim:
            if STATE not in obs:
                raise ShapeError(f"critic: observation lacks '{STATE}'")
            out[STATE] = self.normalizer.normalize(STATE, obs[STATE].float())
        out.update({k: v for k, v in obs.items() if k.startswith(IMAGE_PREFIX)})
        return out

    def _chunks(self, chunks: Tensor) -> Tensor:
        """Raw (B, N, H', Da) with H' >= H -> the first H steps, normalised (B, N, H, Da)."""
        H = self.cfg.chunk_len
        if chunks.dim() != 4 or chunks.shape[-1] != self.action_dim or chunks.shape[2] < H:
            raise ShapeError(
                f"critic: chunks must be (B, N, H>={H}, Da={self.action_dim}), got {tuple(chunks.shape)}"
            )
        return self.normalizer.normalize(ACTION, chunks[:, :, :H].float())

    # -- values ------------------------------------------------------------------------------
    def obs_features(self, obs: Batch, target: bool = False):
        """Observation features (B, F) from the online or the target encoder."""
        return (self.target_encoder if target else self.encoder)(self._obs(obs))

    def score(self, feats, chunks: Tensor, target: bool = False) -> Tensor:
        """feats (B, F), normalised chunks (B, N, H, Da) -> (E, B, N)."""
        B, N = chunks.shape[:2]
        x = torch.cat([feats[:, None].expand(B, N, feats.shape[-1]), chunks.flatten(2)], dim=-1)
        out = (self.target_heads if target else self.heads)(x.reshape(B * N, -1))
        return self.q_scale * out.reshape(-1, B, N)

    def q(self, obs: Batch, chunks: Tensor) -> Tensor:
        """(E, B, N) Q-values of raw chunks (B, N, H, Da) at raw observations."""
        return self.score(self.obs_features(obs), self._chunks(chunks))

    @torch.no_grad()
    def q_target(self, obs: Batch, chunks: Tensor) -> Tensor:
        return self.score(self.obs_features(obs, target=True), self._chunks(chunks), target=True)

    def aggregate(self, q: Tensor) -> Tensor:
        """The pessimistic value used at run time: (E, ...) -> (...)."""
        return aggregate(q, self.cfg.agg, self.cfg.agg_k)

    @torch.no_grad()
    def policy_chunks(self, policy: ChunkPolicy, obs: Batch, n: int) -> Tensor:
        """n raw chunks (B, n, H, Da) drawn from the policy at ``obs``."""
        chunks = policy.sample(policy.encode(obs), n)
        if chunks.dim() != 4 or chunks.shape[2] < self.cfg.chunk_len or chunks.shape[3] != self.action_dim:
            raise ShapeError(
                f"policy chunks {tuple(chunks.shape)} do not fit the critic "
                f"(H>={self.cfg.chunk_len}, Da={self.action_dim})"
            )
        return chunks[:, :, : self.cfg.chunk_len]

    def value(self, obs: Batch, policy: ChunkPolicy | None = None, n: int = 8) -> Tensor:
        """V(s) (B,): the aggregated Q averaged over n chunks of the current policy."""
        if policy is None:
            raise ConfigError(f"{self.type_name} critic: V(s) needs the policy to sample chunks from")
        return self.aggregate(self.q(obs, self.policy_chunks(policy, obs, n))).mean(-1)

    def advantage(self, batch: Batch, policy: ChunkPolicy | None = None, n: int = 8) -> Tensor:
        """A = Q(s, recorded chunk) - V(s), (B,)."""
        q_data = self.aggregate(self.q(batch, batch[ACTION][:, None]))[:, 0]
        return q_data - self.value(batch, policy, n)

    # -- training ----------------------------------------------------------------------------
    def terminal(self, batch: Batch) -> Tensor:
        """(B,) episode ends inside the chunk and no bootstrap follows."""
        done = batch["next.done"].bool()
        if self.cfg.timeout_bootstrap:
            return done & batch["episode_success"].bool()
        return done

    def check_batch(self, batch: Batch) -> None:
        H = self.cfg.chunk_len
        if batch["next.reward"].shape[1] != H or batch[ACTION].shape[1] != H:
            raise ShapeError(
                f"{self.type_name} critic reads chunks of {H}, the batch has {batch[ACTION].shape[1]}: "
                f"build the dataset with chunk_len={H}"
            )

    @torch.no_grad()
    def td_target(self, batch: Batch, policy: ChunkPolicy | None, next_chunks: Tensor | None = None) -> Tensor:
        """Chunk TD target (B,), bootstrapped with ``n_next`` chunks of the current policy at s[t+H]
        (or the given ``next_chunks`` (B, n, H, Da), drawn from it by the caller)."""
        nobs = next_obs(batch)
        if next_chunks is None:
            if policy is None:
                raise ConfigError(f"{self.type_name} critic: the TD target needs the current policy (policy_path=)")
            next_chunks = self.policy_chunks(policy, nobs, self.cfg.n_next)
        q_next = self.q_target(nobs, next_chunks)  # (E, B, n)
        return self.backup(batch, aggregate(q_next, self.cfg.target_agg, self.cfg.agg_k).mean(-1))

    def backup(self, batch: Batch, v_next: Tensor) -> Tensor:
        """The chunk target (B,) of the batch's rewards and done flags with values v_next (B,) at s[t+H]."""
        return chunk_td_target(
            batch["next.reward"].float(), batch["action_is_pad"].bool(), self.terminal(batch), v_next, self.cfg.gamma
        )

    def loss(self, batch: Batch, policy: ChunkPolicy | None = None) -> tuple[Tensor, dict]:
        raise NotImplementedError

    @torch.no_grad()
    def update_target(self, tau: float | None = None) -> None:
        """Polyak averaging after every optimiser step: target <- (1 - tau) target + tau online."""
        tau = self.cfg.tau if tau is None else tau
        for online, target in ((self.encoder, self.target_encoder), (self.heads, self.target_heads)):
            if target is None:  # no encoder of its own (vqh reads the VLA's prefix)
                continue
            for p, tp in zip(online.parameters(), target.parameters(), strict=True):
                tp.lerp_(p, tau)

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """What config.json holds (also what the Trainer records)."""
        return {"type": self.type_name, "config": to_plain(self.cfg), "features": to_plain(self.features)}

    def weights_state(self) -> dict[str, Tensor]:
        """The tensors a checkpoint stores (targets and normaliser buffers included)."""
        return self.state_dict()

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MODEL_CONFIG).write_text(json.dumps(self.config, indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in self.weights_state().items()}
        save_file(state, str(directory / WEIGHTS))
        save_stats(self.stats, directory)

    @classmethod
    def from_checkpoint(cls, directory: Path, data: dict, stats: dict, device="cpu", **kwargs) -> ChunkCritic:
        """Rebuild from config.json's ``data`` and load the weights of ``directory``."""
        critic = cls(make_config(cls, data["config"]), {k: tuple(v) for k, v in data["features"].items()}, stats, **kwargs)
        path = directory / WEIGHTS
        if not path.is_file():
            raise CheckpointError(f"{path}: critic weights missing")
        state = load_file(str(path))
        expected = critic.weights_state()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not fit a {critic.type_name} critic (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        try:
            critic.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: {str(e).splitlines()[0]} (shapes differ from the config)") from None
        return critic.to(device).eval()


def read_critic_dir(path: str | Path) -> tuple[Path, dict, dict]:
    """(model folder, config.json, stats) of a critic checkpoint or training run."""
    directory = resolve_checkpoint(path)
    data = read_json(directory / MODEL_CONFIG)
    if not isinstance(data, dict) or "type" not in data or "config" not in data or "features" not in data:
        raise CheckpointError(f"{directory / MODEL_CONFIG}: not a critic checkpoint (no 'type'/'config'/'features')")
    return directory, data, load_stats(directory)


def make_config(cls: type[ChunkCritic], cfg) -> CriticConfig:
    """The critic class's config dataclass from a dict/OmegaConf node (unknown keys are errors)."""
    return from_dict(cls.config_cls, cfg, where="critic")
