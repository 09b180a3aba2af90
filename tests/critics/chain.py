"""A chain MDP whose chunk Q-values are known in closed form, and a fixed stochastic policy on it.

States 0..L-1, the last one the goal (absorbing, episode ends). An action is -1 or +1
(one float); it moves the agent one state that way, except with probability ``slip``
the agent stays. Reward (the V-GPS convention the critics use): -1 per step, 0 on the
step that reaches the goal. Observations are one-hot states with a fixed instruction.
"""

from __future__ import annotations

import itertools
import types

import numpy as np
import torch

TASK_TEXT = "walk right to the goal"


class Chain:
    def __init__(self, n_states: int = 5, slip: float = 0.2, gamma: float = 0.9):
        self.L, self.slip, self.gamma = n_states, slip, gamma
        self.goal = n_states - 1

    def step(self, s: int, a: float, rng: np.random.Generator) -> tuple[int, float, bool]:
        if rng.random() >= self.slip:
            s = int(np.clip(s + int(np.sign(a)), 0, self.L - 1))
        done = s == self.goal
        return s, (0.0 if done else -1.0), done

    def outcomes(self, s: int, chunk) -> list[tuple[float, float, bool, int]]:
        """Every outcome of executing ``chunk`` from s: (prob, discounted reward sum, ended, state after)."""
        out = [(1.0, 0.0, False, s)]
        for k, a in enumerate(chunk):
            nxt = []
            for p, ret, ended, st in out:
                if ended:
                    nxt.append((p, ret, True, st))
                    continue
                moved = int(np.clip(st + int(np.sign(a)), 0, self.L - 1))
                for prob, s2 in ((1 - self.slip, moved), (self.slip, st)):
                    done = s2 == self.goal
                    nxt.append((p * prob, ret + self.gamma**k * (0.0 if done else -1.0), done, s2))
            out = nxt
        return out

    def exact_chunk_q(self, p_right: np.ndarray, H: int) -> dict[tuple[int, tuple], float]:
        """Q^pi(s, chunk) for every non-goal s and every chunk of H actions in {-1, +1}."""
        chunks = list(itertools.product((-1.0, 1.0), repeat=H))
        n = self.goal  # non-goal states
        R = np.zeros((n, len(chunks)))
        P = np.zeros((n, len(chunks), n))  # discounted-by-gamma^H transition to a live state
        for s in range(n):
            for j, c in enumerate(chunks):
                for p, ret, ended, s2 in self.outcomes(s, c):
                    R[s, j] += p * ret
                    if not ended:
                        P[s, j, s2] += p * self.gamma**H
        pi = np.array([[np.prod([p_right[s] if a > 0 else 1 - p_right[s] for a in c]) for c in chunks]
                       for s in range(n)])
        # V = sum_c pi(c|s) (R + P V)  ->  (I - P_pi) V = R_pi
        V = np.linalg.solve(np.eye(n) - np.einsum("sc,sct->st", pi, P), (pi * R).sum(1))
        Q = R + P @ V
        return {(s, c): float(Q[s, j]) for s in range(n) for j, c in enumerate(chunks)}

    def one_hot(self, states) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.as_tensor(states), self.L).float()

    def random_batch(self, B: int, H: int, rng: np.random.Generator) -> dict:
        """Off-policy chunk transitions: uniform non-goal states, uniform random chunks."""
        s0 = rng.integers(0, self.goal, size=B)
        chunks = rng.choice([-1.0, 1.0], size=(B, H))
        rewards, pad, done, s = np.zeros((B, H)), np.zeros((B, H), bool), np.zeros(B, bool), s0.copy()
        for k in range(H):
            live = ~done
            moves = rng.random(B) >= self.slip
            s2 = np.where(moves, np.clip(s + chunks[:, k].astype(int), 0, self.L - 1), s)
            reached = live & (s2 == self.goal)
            rewards[:, k] = np.where(live, np.where(reached, 0.0, -1.0), 0.0)
            pad[:, k] = done
            done = done | reached
            # the goal itself is never recorded: the last frame stays the next observation
            s = np.where(live & ~reached, s2, s)
        s_next = s
        return {
            "observation.state": self.one_hot(s0),
            "next.observation.state": self.one_hot(s_next),
            "task": [TASK_TEXT] * B,
            "action": torch.as_tensor(chunks, dtype=torch.float32)[..., None],
            "action_is_pad": torch.as_tensor(pad),
            "next.reward": torch.as_tensor(rewards, dtype=torch.float32),
            "next.done": torch.as_tensor(done),
            "episode_success": torch.as_tensor(done.copy()),
        }

    def stats(self) -> dict:
        eye = np.eye(self.L)[: self.goal]
        return {
            "observation.state": {"mean": eye.mean(0).tolist(), "std": eye.std(0).tolist(),
                                  "min": [0.0] * self.L, "max": [1.0] * self.L},
            "action": {"mean": [0.0], "std": [1.0], "min": [-1.0], "max": [1.0]},
        }

    def features(self) -> dict:
        return {"observation.state": (self.L,), "action": (1,)}


class ChainPolicy:
    """A fixed stochastic policy: +1 with probability p_right[s] at every step, independently."""

    def __init__(self, p_right, chunk_len: int, seed: int = 0):
        self.p_right = torch.as_tensor(p_right, dtype=torch.float32)
        self.chunk_len, self.action_dim = chunk_len, 1
        self.gen = torch.Generator().manual_seed(seed)

    def encode(self, obs):
        return obs["observation.state"].argmax(-1)

    def sample(self, ctx, n: int = 1, noise=None):
        p = self.p_right[ctx][:, None, None].expand(len(ctx), n, self.chunk_len)
        right = torch.rand(p.shape, generator=self.gen) < p
        return torch.where(right, 1.0, -1.0)[..., None]


def rollout_frames(mdp: Chain, p_right: float, episodes: int, max_steps: int, rng: np.random.Generator) -> dict:
    """Episodes of a behaviour policy as flat frame arrays, like ChunkDataset.frames."""
    cols = {k: [] for k in ("state", "action", "reward", "episode", "success")}
    for e in range(episodes):
        s, start, success = int(rng.integers(0, mdp.goal)), len(cols["state"]), False
        for _ in range(max_steps):
            a = 1.0 if rng.random() < p_right else -1.0
            s2, r, success = mdp.step(s, a, rng)
            for k, v in (("state", s), ("action", a), ("reward", r), ("episode", e)):
                cols[k].append(v)
            s = s2
            if success:
                break
        cols["success"] += [success] * (len(cols["state"]) - start)
    return {k: np.asarray(v) for k, v in cols.items()}


def frames_batch(mdp: Chain, frames: dict, idx: np.ndarray, H: int, mc: np.ndarray) -> dict:
    """Chunk items for frames ``idx``, with ChunkDataset's layout and padding rules."""
    ep = frames["episode"]
    last = np.searchsorted(ep, ep[idx], side="right") - 1  # last frame of each episode
    steps = idx[:, None] + np.arange(H)[None]
    pad = steps > last[:, None]
    steps = np.minimum(steps, last[:, None])
    return {
        "observation.state": mdp.one_hot(frames["state"][idx]),
        "next.observation.state": mdp.one_hot(frames["state"][np.minimum(idx + H, last)]),
        "task": [TASK_TEXT] * len(idx),
        "action": torch.as_tensor(frames["action"][steps], dtype=torch.float32)[..., None],
        "action_is_pad": torch.as_tensor(pad),
        "next.reward": torch.as_tensor(np.where(pad, 0.0, frames["reward"][steps]), dtype=torch.float32),
        "next.done": torch.as_tensor(idx + H > last),
        "episode_success": torch.as_tensor(frames["success"][idx]),
        "mc_return": torch.as_tensor(mc[idx]),
    }


class ChainPrefixPolicy(ChainPolicy):
    """ChainPolicy whose context carries prefix tokens (B, T, D) and a mask, as a VLA's does.

    Token 0 holds the one-hot state; token 1 is padding (mask False) filled with noise, which
    a value-query head must ignore.
    """

    def __init__(self, p_right, chunk_len: int, d: int = 8, seed: int = 0):
        super().__init__(p_right, chunk_len, seed)
        self.encoder = types.SimpleNamespace(d_model=d)

    def encode(self, obs):
        state = obs["observation.state"]
        B, L = state.shape
        tokens = torch.zeros(B, 2, self.encoder.d_model)
        tokens[:, 0, :L] = state
        tokens[:, 1] = torch.randn(B, self.encoder.d_model, generator=self.gen) * 10
        mask = torch.tensor([True, False]).expand(B, 2)
        return types.SimpleNamespace(tokens=tokens, mask=mask, state=state.argmax(-1))

    def sample(self, ctx, n: int = 1, noise=None):
        return super().sample(ctx.state, n)


def write_chain_dataset(root, mdp: Chain, episodes: int, p_right: float, source: str, max_steps: int,
                        rng: np.random.Generator, intervene: bool = False):
    """Chain episodes as a LeRobot dataset (state, an 8x8 camera, the instruction).

    ``intervene``: a scripted intervener takes over (moves right) whenever the policy
    proposes to move left from state 2 or beyond.
    """
    from vla.data import EpisodeWriter

    spec = {"observation.state": (mdp.L,), "observation.images.top": (8, 8, 3)}
    with EpisodeWriter(root, fps=10, obs_spec=spec, action_dim=1, use_videos=False) as w:
        for e in range(episodes):
            s = int(rng.integers(0, mdp.goal))
            for _ in range(max_steps):
                image = np.zeros((8, 8, 3), np.uint8)
                image[:, s] = 255
                obs = {"observation.state": np.eye(mdp.L, dtype=np.float32)[s], "observation.images.top": image,
                       "task": TASK_TEXT}
                proposed = 1.0 if rng.random() < p_right else -1.0
                took_over = intervene and proposed < 0 and s >= 2
                action = 1.0 if took_over else proposed
                s, _, success = mdp.step(s, action, rng)
                w.add_step(obs, [action], policy_action=[proposed], intervention=took_over,
                           reward=float(success), success=success, done=success)
                if success:
                    break
            w.end_episode(source, seed=e)
    return root
