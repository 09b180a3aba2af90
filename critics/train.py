"""Training a critic on recorded episodes: the composition behind ``scripts/train_critic.py``.

    data folders -> ChunkDataset (chunk_len, gamma and reward of the critic)
                 -> episodes split into training and held-out ones
    policy_path  -> the current policy: bootstraps the TD target (frozen), seeds the
                    critic's encoder copy (``encoder.type=vla``), or is the VLA a vqh head reads
    vla.train.Trainer (AdamW, schedule, atomic checkpoints, resume) with a Polyak target
    update after every step, then diagnostics of the saved critic on the held-out episodes,
    and on ``eval_data`` (datasets never trained on, e.g. fresh rollouts) when given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from critics import critic_class, load_critic
from critics.base import calibration_returns, make_config
from critics.diagnostics import write_diagnostics
from vla.errors import ConfigError
from vla.train import TrainConfig, Trainer

log = logging.getLogger(__name__)


def split_episodes(episode_ids, holdout: float, seed: int) -> tuple[list, list]:
    """(training, held-out) episode ids: a seeded random ``holdout`` fraction, at least one of each."""
    ids = np.asarray(episode_ids)
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"holdout={holdout} must lie in [0, 1)")
    n_held = int(round(holdout * len(ids)))
    if holdout > 0 and len(ids) >= 2:
        n_held = min(max(n_held, 1), len(ids) - 1)
    perm = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[perm[n_held:]].tolist()), sorted(ids[perm[:n_held]].tolist())


def train_critic(cfg: Mapping) -> Path:
    """Train the critic ``cfg["critic"]`` on ``cfg["data"]``; returns the run's out folder."""
    for key in ("critic", "data", "out"):
        if cfg.get(key) in (None, "", "???"):
            raise ConfigError(f"missing config value '{key}' (e.g. {key}=...)")
    critic_cfg = dict(cfg["critic"])
    cls = critic_class(critic_cfg.get("type", "aloe"))
    ccfg = make_config(cls, critic_cfg)
    data = [cfg["data"]] if isinstance(cfg["data"], str) else list(cfg["data"])
    seed = int(cfg.get("seed") or 0)
    train_cfg = TrainConfig.from_dict({
        **dict(cfg.get("train") or {}),
        **{k: cfg[k] for k in ("steps", "batch_size", "resume", "seed") if cfg.get(k) is not None},
    })

    policy = None
    if cfg.get("policy_path"):
        from policies import load_policy

        policy = load_policy(cfg["policy_path"])
        if policy.chunk_len < ccfg.chunk_len:
            raise ConfigError(f"critic.chunk_len={ccfg.chunk_len} exceeds the policy's chunk ({policy.chunk_len})")
    elif ccfg.type != "iql":
        raise ConfigError(f"critic={ccfg.type} bootstraps with the current policy: give policy_path=<ckpt>")

    eval_data = cfg.get("eval_data") or []
    eval_data = [eval_data] if isinstance(eval_data, str) else list(eval_data)
    overlap = sorted({str(Path(d).resolve()) for d in data} & {str(Path(d).resolve()) for d in eval_data})
    if overlap:
        raise ConfigError(f"eval_data must hold episodes the critic never trains on; also in data: {overlap}")
    dataset = critic_dataset(data, ccfg, cfg)
    train_ids, held_ids = split_episodes(dataset.episode_ids(), float(cfg.get("holdout", 0.2)), seed)
    log.info("data: %d frames, %d episodes (%d held out) from %s", len(dataset), dataset.num_episodes,
             len(held_ids), data)

    torch.manual_seed(seed)
    critic = cls(ccfg, dataset.features, dataset.compute_stats(), policy=policy)
    joint = bool(getattr(ccfg, "train_vla", False))
    trainer = Trainer(
        critic,
        lambda model, batch: model.loss(batch, policy),
        Subset(dataset, dataset.subset_episodes(train_ids)),
        train_cfg,
        cfg["out"],
        frozen=[policy] if policy is not None and not joint else [],
        on_step=lambda trainer, step, logs: critic.update_target(),
        run_config=dict(cfg),
    )
    trainer.fit()

    if (held_ids or eval_data) and trainer.accelerator.is_main_process:
        device = trainer.accelerator.device
        saved = load_critic(cfg["out"], device=device)  # what users get: the saved weights
        diag = cfg.get("diagnostics") or {}
        extra = {"train_episodes": len(train_ids), "data": data, "policy_path": cfg.get("policy_path"),
                 "steps": train_cfg.steps}
        checks = []
        if held_ids:
            checks.append((Subset(dataset, dataset.subset_episodes(held_ids)), Path(cfg["out"]),
                           {"held_out_episodes": len(held_ids)}, "held-out"))
        if eval_data:
            fresh = critic_dataset(eval_data, ccfg, cfg)
            checks.append((fresh, Path(cfg["out"]) / "eval_data",
                           {"eval_data": eval_data, "eval_episodes": fresh.num_episodes}, "eval_data"))
        for subset, where, more, name in checks:
            result = write_diagnostics(
                saved, subset, where, policy=None if ccfg.type == "vqh" else policy, device=device,
                batch_size=int(diag.get("batch_size", 256)), value_samples=int(diag.get("value_samples", 8)),
                bootstrap=int(diag.get("bootstrap", 200)), extra={**more, **extra})
            log.info("%s: spearman %s, auroc %s (%s)", name, result.get("spearman_q"), result.get("auroc_q"),
                     where / "diagnostics.json")
    return Path(cfg["out"])


def critic_dataset(paths: list, ccfg, cfg: Mapping):
    """Chunks with the critic's chunk length, discount and reward, and the return its backup matches."""
    from vla.data import ChunkDataset, mc_returns, takeover_penalties

    dataset = ChunkDataset(paths, chunk_len=ccfg.chunk_len, gamma=ccfg.gamma, reward_mode=ccfg.reward_mode,
                           obs_keys=cfg.get("obs_keys"), cache_images=bool(cfg.get("cache_images", True)))
    f = dataset.frames
    # The return that matches the critic's backup (failed episodes bootstrap at their time-out).
    f["mc_return"] = calibration_returns(f["reward_used"], f["global_episode"], f["episode_success"],
                                         ccfg.gamma, ccfg.timeout_bootstrap)
    if ccfg.takeover_penalty > 0:  # RLIF's cost, added after the time-out continuation (returns are linear)
        cost = takeover_penalties(f["intervention"], f["global_episode"], ccfg.takeover_penalty)
        f["reward_used"] = (f["reward_used"] + cost).astype(np.float32)
        f["mc_return"] = (f["mc_return"] + mc_returns(cost, f["global_episode"], ccfg.gamma)).astype(np.float32)
    return dataset
