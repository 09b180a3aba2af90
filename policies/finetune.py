"""Post-training of a policy checkpoint: AWM, APO and the baselines, on the same data.

``finetune(cfg)`` is what ``scripts/finetune.py`` runs. It opens the policy
(``policy_path``, ours or a LeRobot one), the chunk datasets (``data``) at the policy's
chunk length, the critic where AWM uses one (``critic_path``), builds the objective and
the batches it wants, and trains with ``vla.train.Trainer`` (checkpoints under
``<out>/checkpoints/``, the deployable weights in ``.../pretrained_model``):

| algo        | frames                                   | loss                                    |
| ----------- | ---------------------------------------- | --------------------------------------- |
| awm         | all                                      | advantage-weighted head loss (awm.py)   |
| apo         | labelled ones, stratified batches        | KTO on the implicit log-ratio (apo.py)  |
| bc          | all                                      | head loss                               |
| filtered_bc | successful episodes                      | head loss                               |
| hg_dagger   | demonstrations + intervener-in-control   | head loss on the intervener's steps     |

The policy keeps the normalisation stats it was trained with; the frozen reference (AWM,
APO) is a copy of the loaded policy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from torch.utils.data import Subset

from policies.apo import GROUP_NAMES, APOConfig, APOLoss, StratifiedSampler, dataset_groups
from policies.awm import AWMConfig, AWMLoss
from policies.baselines import BASELINES, BCLoss, select_frames
from vla.errors import ConfigError, DataError, ShapeError
from vla.types import ACTION

log = logging.getLogger(__name__)

ALGOS = ("awm", "apo", *BASELINES)
# top-level keys of configs/finetune.yaml that are not training options
_RUN_KEYS = ("algo", "policy_path", "critic_path", "data", "out", "gamma", "intervention_window")


def _required(cfg: Mapping, key: str):
    value = cfg.get(key)
    if value in (None, "", "???") or (isinstance(value, list | tuple) and not value):
        raise ConfigError(f"missing config value '{key}' (e.g. {key}=...)")
    return value


def _obs_keys(policy) -> list[str]:
    """The observation keys the policy reads (its ``features``)."""
    return [k for k in policy.features if k != ACTION and k.startswith("observation.")]


def _check_compatible(policy, dataset, data) -> None:
    policy.check_compatible(dataset.features, where=f"data {data}")
    if dataset.action_dim != policy.action_dim:
        raise ShapeError(f"data {data}: actions have {dataset.action_dim} dims, the policy {policy.action_dim}")


def _load_critic(path, policy):
    from critics import load_critic  # only AWM with a critic needs it

    critic = load_critic(path)
    if critic.chunk_len > policy.chunk_len:
        raise ShapeError(f"critic {path} scores chunks of {critic.chunk_len} steps, the policy makes {policy.chunk_len}")
    return critic


def build_objective(name: str, algo_cfg: dict, policy, dataset, batch_size: int, seed: int,
                    critic_path=None) -> dict:
    """The Trainer arguments for one algorithm: loss_fn, dataset, sampler, frozen, extra_state, on_step."""
    if name not in ALGOS:
        raise ConfigError(f"algo={name!r}: expected one of {ALGOS}")
    if critic_path and name != "awm":
        log.warning("critic_path is only used by algo=awm; ignored for algo=%s", name)
    if name == "awm":
        critic = _load_critic(critic_path, policy) if critic_path else None
        awm = AWMLoss(policy, AWMConfig.from_dict(algo_cfg), critic=critic)
        log.info("AWM advantages from %s", f"the critic at {critic_path}" if awm.use_critic else
                 "Monte-Carlo returns with a batch baseline")
        frozen = [m for m in (awm.reference, awm.trailing, critic) if m is not None]
        out = {"loss_fn": awm, "dataset": dataset, "frozen": frozen}
        if awm.trailing is not None:
            out["extra_state"] = {"trailing": awm.trailing}
            out["on_step"] = lambda trainer, step, logs: awm.on_step(trainer.model)
        return out
    if name == "apo":
        apo_cfg = APOConfig.from_dict(algo_cfg)
        groups = dataset_groups(dataset.frames, apo_cfg.autonomous)
        counts = {g: int((groups == i).sum()) for i, g in enumerate(GROUP_NAMES)}
        log.info("APO frames per group: %s, unlabelled %d", counts, int((groups < 0).sum()))
        if not any(counts.values()):
            raise DataError("algo=apo: the data has no labelled frames (no demonstrations, successful "
                            "episodes or interventions)")
        sampler = StratifiedSampler(groups, apo_cfg.ratios, batch_size, seed=seed)
        apo = APOLoss(policy, apo_cfg)
        return {"loss_fn": apo, "dataset": dataset, "sampler": sampler, "frozen": [apo.reference]}
    idx = select_frames(name, dataset.frames)
    log.info("%s: %d of %d frames", name, len(idx), len(dataset))
    unknown = sorted(set(algo_cfg) - {"name", "one_actor"})
    if unknown:
        raise ConfigError(f"algo={name}: unknown option(s) {unknown}; known: ['one_actor']")
    loss_fn = BCLoss(name, algo_cfg.get("one_actor", True))
    return {"loss_fn": loss_fn, "dataset": Subset(dataset, idx.tolist()), "frozen": []}


def finetune(cfg: Mapping) -> Path:
    """Run one post-training job (see the module doc); returns the out folder."""
    from policies import load_policy
    from vla.data import ChunkDataset
    from vla.train import TrainConfig, Trainer

    algo = dict(_required(cfg, "algo"))
    name = algo.pop("name", None)
    if name is None:
        raise ConfigError(f"the algo config has no 'name' (one of {ALGOS})")
    policy_path, out = _required(cfg, "policy_path"), _required(cfg, "out")
    data = _required(cfg, "data")
    data = [data] if isinstance(data, str) else list(data)
    train_cfg = TrainConfig.from_dict({
        **dict(cfg.get("train") or {}),
        **{k: cfg[k] for k in ("steps", "batch_size", "resume", "seed") if cfg.get(k) is not None},
    })

    policy = load_policy(policy_path)  # on the CPU; the trainer moves it to its device
    dataset = ChunkDataset(
        data, chunk_len=policy.chunk_len, gamma=float(cfg.get("gamma", 0.99)), obs_keys=_obs_keys(policy),
        intervention_window=int(cfg.get("intervention_window", 10)),
    )
    _check_compatible(policy, dataset, data)
    log.info("data: %d frames in %d episodes from %s", len(dataset), dataset.num_episodes, data)
    parts = build_objective(name, algo, policy, dataset, train_cfg.batch_size, train_cfg.seed,
                            cfg.get("critic_path"))
    run_config = {k: cfg.get(k) for k in _RUN_KEYS}
    run_config["algo"] = {"name": name, **algo}
    trainer = Trainer(
        policy, parts["loss_fn"], parts["dataset"], train_cfg, out,
        sampler=parts.get("sampler"), frozen=parts["frozen"], extra_state=parts.get("extra_state"),
        on_step=parts.get("on_step"), run_config=run_config,
    )
    trainer.fit()
    return Path(out)


__all__ = ["ALGOS", "build_objective", "finetune"]
