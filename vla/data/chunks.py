"""Chunk dataset: for frame t, the observation, the action chunk a[t:t+H] and what the critics need.

One item (see the batch layout in DESIGN.md and ``vla/data/__init__.py``):
observation at t, ``action`` (H, Da) with ``action_is_pad`` (H,), ``policy_action``,
``intervention`` (H,), ``next.reward`` (H,) (0 where padded), ``next.done`` (the episode
ends inside the chunk: cut the return sum and the bootstrap), the observation at t+H
(``next.observation.*``, clamped to the last frame), ``mc_return``, labels for APO and
the episode's source and success.

Several datasets at once; the non-image columns are held in memory (small), images are
decoded by LeRobot per item (or cached in memory with ``cache_images=True``). Datasets
written by LeRobot itself, without our columns, load with defaults: no intervention,
policy action = action, zero reward, success unknown (False).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vla.data.returns import episode_bounds, mc_returns, pre_takeover_mask, sparse_negative_rewards
from vla.data.stats import array_stats
from vla.data.writer import read_journal, repair
from vla.errors import DataError, ShapeError
from vla.types import ACTION, DONE, INTERVENTION, POLICY_ACTION, REWARD, STATE, SUCCESS, image_keys

log = logging.getLogger(__name__)

REWARD_MODES = ("raw", "sparse_neg")


def open_lerobot(root: str | Path):
    """Open a local LeRobot dataset (offline), repairing a crashed write of ours first."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    if not (root / "meta" / "info.json").exists():
        raise DataError(f"{root}: no LeRobot dataset here (meta/info.json missing)")
    repair(root)
    try:
        return LeRobotDataset(f"local/{root.name}", root=root, video_backend=_video_backend())
    except Exception as e:  # LeRobot's own errors are long; keep one line
        raise DataError(f"{root}: cannot open as a LeRobot dataset: {type(e).__name__}: {e}") from e


def _video_backend() -> str:
    try:
        import torchcodec.decoders  # noqa: F401

        return "torchcodec"
    except Exception:
        return "pyav"


class ChunkDataset(Dataset):
    def __init__(
        self,
        roots: list[str | Path] | str | Path,
        chunk_len: int,
        gamma: float = 0.99,
        obs_keys: list[str] | None = None,
        reward_mode: str = "raw",
        intervention_window: int = 10,
        require: tuple[str, ...] = (),
        load_images: bool = True,
        cache_images: bool = False,
        episodes: dict[int, list[int]] | None = None,
    ):
        """``episodes`` optionally selects episodes per root index ({0: [0, 3], 1: [2]})."""
        if isinstance(roots, str | Path):
            roots = [roots]
        if not roots:
            raise DataError("no dataset given (data=[...] is empty)")
        if chunk_len < 1:
            raise DataError(f"chunk_len must be >= 1, got {chunk_len}")
        if reward_mode not in REWARD_MODES:
            raise DataError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
        self.roots = [Path(r) for r in roots]
        self.chunk_len = int(chunk_len)
        self.gamma = float(gamma)
        self.cache_images = cache_images
        self._image_cache: dict[tuple[int, int], dict] = {}

        self._lerobot = [open_lerobot(r) for r in self.roots]
        first = self._lerobot[0]
        all_image_keys = image_keys(first.meta.features)
        default_keys = ([STATE] if STATE in first.meta.features else []) + all_image_keys
        self.obs_keys = list(obs_keys) if obs_keys is not None else default_keys
        if not load_images:
            self.obs_keys = [k for k in self.obs_keys if k not in all_image_keys]
        self.image_keys = image_keys(self.obs_keys)
        for key in self.obs_keys + [ACTION] + list(require):
            for root, ds in zip(self.roots, self._lerobot, strict=True):
                if key not in ds.meta.features:
                    raise DataError(f"{root}: dataset lacks column '{key}' (has: {sorted(ds.meta.features)})")
        self.features = self._features()

        cols = [self._load_columns(i, (episodes or {}).get(i)) for i in range(len(self.roots))]
        self.frames = {k: np.concatenate([c[k] for c in cols]) for k in cols[0]}
        rewards = self.frames["reward"]
        if reward_mode == "sparse_neg":
            rewards = sparse_negative_rewards(self.frames["success"])
        self.frames["reward_used"] = rewards.astype(np.float32)
        self.frames["mc_return"] = mc_returns(rewards, self.frames["global_episode"], self.gamma)
        self.frames["label.human"] = self.frames["intervention"].copy()
        self.frames["label.pre_takeover"] = pre_takeover_mask(
            self.frames["intervention"], self.frames["global_episode"], intervention_window
        )
        # for each frame, the last frame of its episode (flat index)
        ep_end = np.zeros(len(rewards), dtype=np.int64)
        for start, end in episode_bounds(self.frames["global_episode"]):
            ep_end[start:end] = end - 1
        self.frames["episode_last"] = ep_end
        if len(rewards) == 0:
            raise DataError(f"{self.roots}: the datasets hold no frames")

    # -- loading -------------------------------------------------------------------------
    def _features(self) -> dict[str, tuple]:
        feats: dict[str, tuple] = {}
        for root, ds in zip(self.roots, self._lerobot, strict=True):
            mine = {}
            for key in self.obs_keys + [ACTION]:
                shape = tuple(ds.meta.features[key]["shape"])
                if key in self.image_keys:  # stored (H, W, 3), served (3, H, W)
                    shape = (shape[2], shape[0], shape[1]) if shape[-1] == 3 else shape
                mine[key] = shape
            if feats and mine != feats:
                diff = [k for k in mine if mine[k] != feats.get(k)]
                raise ShapeError(f"{root}: features {diff} disagree with the first dataset ({self.roots[0]})")
            feats = mine
        return feats

    def _load_columns(self, i: int, keep: list[int] | None) -> dict[str, np.ndarray]:
        ds = self._lerobot[i]
        hf = ds.hf_dataset.with_format(None)
        n = len(hf)
        journal = {e["episode_index"]: e for e in read_journal(self.roots[i])}
        action = np.asarray(hf[ACTION], dtype=np.float32).reshape(n, -1)
        state = np.asarray(hf[STATE], dtype=np.float32).reshape(n, -1) if STATE in self.obs_keys else None
        ep = np.asarray(hf["episode_index"], dtype=np.int64)
        cols = {
            "root": np.full(n, i, dtype=np.int64),
            "row": np.arange(n, dtype=np.int64),
            "episode_index": ep,
            "frame_index": np.asarray(hf["frame_index"], dtype=np.int64),
            "global_index": np.asarray(hf["index"], dtype=np.int64),
            "action": action,
            "policy_action": (
                np.asarray(hf[POLICY_ACTION], dtype=np.float32).reshape(n, -1)
                if POLICY_ACTION in hf.column_names else action.copy()
            ),
            "intervention": self._flag(hf, INTERVENTION, n),
            "reward": (
                np.asarray(hf[REWARD], dtype=np.float32).reshape(n) if REWARD in hf.column_names
                else np.zeros(n, np.float32)
            ),
            "success": self._flag(hf, SUCCESS, n),
            "done": self._flag(hf, DONE, n),
            "task": np.asarray([ds.meta.tasks.index[t] for t in hf["task_index"]], dtype=object),
        }
        if state is not None:
            cols["state"] = state
        ep_success = {}
        for e in np.unique(ep):
            entry = journal.get(int(e), {})
            ep_success[int(e)] = bool(entry.get("success", cols["success"][ep == e].any()))
        cols["episode_success"] = np.array([ep_success[int(e)] for e in ep], dtype=bool)
        cols["source"] = np.array([journal.get(int(e), {}).get("source", "demo") for e in ep], dtype=object)
        # a key that is unique across datasets, for returns and labels
        cols["global_episode"] = ep + (i << 32)
        if keep is not None:
            mask = np.isin(ep, np.asarray(keep))
            cols = {k: v[mask] for k, v in cols.items()}
        return cols

    @staticmethod
    def _flag(hf, name: str, n: int) -> np.ndarray:
        if name not in hf.column_names:
            return np.zeros(n, dtype=bool)
        return np.asarray(hf[name]).reshape(n).astype(bool)

    # -- public --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.frames["action"])

    @property
    def action_dim(self) -> int:
        return int(self.frames["action"].shape[1])

    @property
    def num_episodes(self) -> int:
        return len(np.unique(self.frames["global_episode"]))

    def compute_stats(self) -> dict[str, dict[str, list[float]]]:
        stats = {ACTION: array_stats(self.frames["action"])}
        if "state" in self.frames:
            stats[STATE] = array_stats(self.frames["state"])
        return stats

    def _images(self, flat: int) -> dict[str, torch.Tensor]:
        root, row = int(self.frames["root"][flat]), int(self.frames["row"][flat])
        cached = self._image_cache.get((root, row))
        if cached is not None:
            return cached
        item = self._lerobot[root][row]
        imgs = {k: item[k].float() for k in self.image_keys}
        if self.cache_images:
            self._image_cache[(root, row)] = imgs
        return imgs

    def _obs(self, flat: int, prefix: str = "") -> dict:
        out = {}
        if "state" in self.frames:
            out[prefix + STATE] = torch.from_numpy(self.frames["state"][flat])
        if self.image_keys:
            for k, v in self._images(flat).items():
                out[prefix + k] = v
        return out

    def __getitem__(self, idx: int) -> dict:
        f, H = self.frames, self.chunk_len
        last = int(f["episode_last"][idx])
        steps = np.arange(idx, idx + H)
        is_pad = steps > last
        steps = np.minimum(steps, last)
        rewards = np.where(is_pad, 0.0, f["reward_used"][steps]).astype(np.float32)
        next_idx = min(idx + H, last)
        item = {
            **self._obs(idx),
            **self._obs(next_idx, prefix="next."),
            "task": f["task"][idx],
            "action": torch.from_numpy(f["action"][steps]),
            "action_is_pad": torch.from_numpy(is_pad),
            "policy_action": torch.from_numpy(f["policy_action"][steps]),
            "intervention": torch.from_numpy(f["intervention"][steps] & ~is_pad),
            "next.reward": torch.from_numpy(rewards),
            "next.done": torch.tensor(idx + H > last),
            "mc_return": torch.tensor(f["mc_return"][idx]),
            "episode_success": torch.tensor(bool(f["episode_success"][idx])),
            "source": f["source"][idx],
            "label.human": torch.tensor(bool(f["label.human"][idx])),
            "label.pre_takeover": torch.tensor(bool(f["label.pre_takeover"][idx])),
            "episode_index": torch.tensor(int(f["episode_index"][idx])),
            "global_episode": torch.tensor(int(f["global_episode"][idx])),  # unique across the folders
            "frame_index": torch.tensor(int(f["frame_index"][idx])),
        }
        return item

    def episode_ids(self) -> np.ndarray:
        """Unique global episode ids (for train/held-out splits)."""
        return np.unique(self.frames["global_episode"])

    def subset_episodes(self, global_episodes) -> list[int]:
        """Frame indices of the given global episode ids (for torch ``Subset``)."""
        return np.flatnonzero(np.isin(self.frames["global_episode"], np.asarray(global_episodes))).tolist()


def make_dataloader(
    dataset,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = True,
    sampler=None,
    seed: int = 0,
    drop_last: bool = True,
) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    if batch_size > len(dataset) and drop_last:
        log.warning("batch_size %d > %d frames: using the dataset size", batch_size, len(dataset))
        batch_size = len(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=gen,
        persistent_workers=num_workers > 0,
    )
