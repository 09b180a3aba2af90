"""Per-frame quantities derived from whole episodes: returns and intervention labels.

All functions take flat per-frame arrays of one or many episodes, with
``episode_index`` telling them apart (frames of an episode contiguous and in order).
"""

from __future__ import annotations

import numpy as np


def episode_bounds(episode_index: np.ndarray) -> list[tuple[int, int]]:
    """[(start, end)) of each contiguous episode in a flat frame array."""
    ep = np.asarray(episode_index)
    if len(ep) == 0:
        return []
    cuts = np.flatnonzero(np.diff(ep) != 0) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(ep)]])
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def mc_returns(rewards: np.ndarray, episode_index: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted Monte-Carlo return G_t = sum_k gamma^k r_{t+k}, within each episode.

    A reverse scan; the return does not leak across episode borders.
    """
    rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
    out = np.zeros_like(rewards)
    for start, end in episode_bounds(episode_index):
        running = 0.0
        for i in range(end - 1, start - 1, -1):
            running = rewards[i] + gamma * running
            out[i] = running
    return out.astype(np.float32)


def sparse_negative_rewards(success: np.ndarray) -> np.ndarray:
    """V-GPS reward: -1 on every step, 0 on steps where the task is solved."""
    return np.where(np.asarray(success, dtype=bool).reshape(-1), 0.0, -1.0).astype(np.float32)


def takeover_starts(intervention: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
    """Boolean mask of frames where a human takes over (first step of each intervention run)."""
    iv = np.asarray(intervention, dtype=bool).reshape(-1)
    starts = np.zeros_like(iv)
    for start, end in episode_bounds(episode_index):
        seg = iv[start:end]
        prev = np.concatenate([[False], seg[:-1]])
        starts[start:end] = seg & ~prev
    return starts


def takeover_penalties(intervention: np.ndarray, episode_index: np.ndarray, penalty: float) -> np.ndarray:
    """RLIF's reward: ``-penalty`` on the policy's last step before each takeover, 0 elsewhere.

    The transition (s, a) -> s' on which a person decided to take over is the one that
    gets the cost (Luo et al., RLIF, ICLR 2024). A takeover on an episode's first frame has
    no step before it and costs nothing.
    """
    iv = np.asarray(intervention, dtype=bool).reshape(-1)
    ep = np.asarray(episode_index).reshape(-1)
    out = np.zeros(len(iv), dtype=np.float32)
    starts = np.flatnonzero(takeover_starts(iv, ep))  # the step before a start is the policy's
    before = starts[starts > 0] - 1
    before = before[ep[before] == ep[before + 1]]  # unless the start opens its episode
    out[before] = -float(penalty)
    return out


def pre_takeover_mask(intervention: np.ndarray, episode_index: np.ndarray, window: int) -> np.ndarray:
    """The policy's own steps among the ``window`` steps just before each takeover (APO's undesirable set)."""
    iv = np.asarray(intervention, dtype=bool).reshape(-1)
    starts = np.flatnonzero(takeover_starts(iv, episode_index))
    out = np.zeros_like(iv)
    bounds = episode_bounds(episode_index)
    ep_start = np.zeros(len(iv), dtype=np.int64)
    for start, end in bounds:
        ep_start[start:end] = start
    for s in starts:
        lo = max(ep_start[s], s - window)
        out[lo:s] = True
    return out & ~iv
