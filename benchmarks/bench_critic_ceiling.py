"""How well could any critic score recorded sim rollouts? The Monte-Carlo ceiling of the critic diagnostics.

The diagnostics (critics/diagnostics.py) compare a critic's Q of each recorded chunk with the
return that followed it (Spearman) and with the episode's success (AUROC). That return is one
draw of a random future, so no critic can beat the expected return of the recorded chunk under
the behaviour that recorded it, E[G | s_t, chunk]. For rollouts recorded in simulation
(``scripts/collect.py source=policy [intervener=scripted]``) this benchmark estimates it:

1. replay each episode from its seed with the recorded actions (the sim is deterministic: every
   observation is checked against the recording; the intervener is replayed alongside, and the
   steps where it would act otherwise than recorded are listed in ``intervener_disagreements``,
   a few per hundred episodes, after which its state in the branches is approximate);
2. at every chunk start t, branch K futures from a snapshot: the recorded H actions, then the same
   behaviour (the policy, resampled, and the same scripted intervener) to the episode's end;
3. their mean return, in the critics' convention (-1 per step, 0 at success, a failed time-out
   continues at -1 forever), estimates E[G | s_t, chunk].

Its Spearman / AUROC against the realised returns is the ceiling of the diagnostics on these
episodes (a K-sample estimate sits a little below the exact one). Critics given with ``--critic``
are scored on the same frames, so the two read side by side.

    OMP_NUM_THREADS=1 python benchmarks/bench_critic_ceiling.py --data <rollouts> --policy <ckpt> \
        [--env pick_place] [--k 12] [--chunk-len 8] [--critic <ckpt> ...] [--episodes N] [--workers 2] [--write <json>]

The scripted intervener is rebuilt from configs/collect.yaml (``--scripted key=value`` for the
options the rollouts were collected with). Expert demonstrations are not supported: the noisy
expert keeps per-episode choices hidden from the observation, so a replay would know more than
any critic can.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml
from common import emit

import sim
from critics.base import calibration_returns
from critics.diagnostics import auroc, bootstrap_intervals, spearman
from policies import load_policy
from sim.collect import build_intervener
from vla.agent import ChunkAgent, execute_steps_for
from vla.data import open_lerobot, read_journal, sparse_negative_rewards
from vla.types import SOURCE_DEMO

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def episode_return(success_steps: list[bool], gamma: float) -> float:
    """The return from the first of these steps, as the critics' ``mc_return`` (critics/train.py)."""
    success = np.asarray(success_steps, bool)
    rewards = sparse_negative_rewards(success)
    episode = np.zeros(len(success), np.int64)
    return float(calibration_returns(rewards, episode, np.full(len(success), success.any()), gamma, True)[0])


class Replayer:
    """One worker: the env, the policy and the intervener, replaying episodes and branching futures."""

    def __init__(self, env_name: str, policy_path: str, scripted: dict, k: int, chunk_len: int | None, gamma: float):
        torch.set_num_threads(1)
        self.env = sim.make_from_config(yaml.safe_load((CONFIGS / "env" / f"{env_name}.yaml").read_text()))
        self.base = self.env.unwrapped
        if not hasattr(self.base, "snapshot"):
            raise SystemExit(f"{env_name}: replaying needs one of the sim tasks (ArmEnv.snapshot / restore)")
        self.policy = load_policy(policy_path)
        self.execute = execute_steps_for(self.policy, None)
        self.chunk_len = int(chunk_len or self.execute)
        collect_cfg = yaml.safe_load((CONFIGS / "collect.yaml").read_text())
        self.intervener = build_intervener({"intervener": "scripted", "expert": None,
                                            "scripted": {**(collect_cfg.get("scripted") or {}), **scripted}}, self.env)
        self.k, self.gamma = int(k), float(gamma)
        self.disagreements: list[tuple[int, int]] = []  # (episode, step) where the replayed intervener differs

    def _copy(self, obj):
        """A deep copy that shares the env (the intervener's expert and progress read it)."""
        return copy.deepcopy(obj, {id(self.base): self.base, id(self.env): self.env})

    def _future(self, snap, intervener, actions, proposals, seed: int) -> float:
        obs, steps = self.base.restore(snap), []
        for a, p in zip(actions, proposals, strict=True):  # the recorded chunk, the intervener kept in step
            intervener.act(obs, p)
            obs, _, success, truncated, _ = self.env.step(a)
            steps.append(bool(success))
            if success or truncated:
                return episode_return(steps, self.gamma)
        agent = ChunkAgent(self.policy, self.execute)
        agent.reset(seed)
        while True:
            a, _ = intervener.act(obs, np.asarray(agent.act(obs), np.float32))
            obs, _, success, truncated, _ = self.env.step(np.asarray(a, np.float32))
            steps.append(bool(success))
            if success or truncated:
                return episode_return(steps, self.gamma)

    def episode(self, ep: dict) -> list[dict]:
        actions, proposals, states = ep["action"], ep["policy_action"], ep["state"]
        success = np.zeros(len(actions), bool)
        success[-1] = ep["success"]
        rng = np.random.default_rng(ep["seed"])
        obs, _ = self.env.reset(seed=ep["seed"])
        self.intervener.reset(seed=ep["seed"])
        rows = []
        for t in range(len(actions)):
            if np.abs(obs["observation.state"] - states[t]).max() > 1e-4:
                raise SystemExit(f"episode {ep['index']} (seed {ep['seed']}) does not replay at step {t}: "
                                 "another env config or sim version than the recording's?")
            if t % self.execute == 0:
                snap = self.base.snapshot()
                end = min(t + self.chunk_len, len(actions))
                values = [self._future(snap, self._copy(self.intervener), actions[t:end], proposals[t:end],
                                       int(rng.integers(1 << 31))) for _ in range(self.k)]
                self.base.restore(snap)
                rows.append({"episode": ep["index"], "t": t, "success": bool(ep["success"]),
                             "ret": episode_return(success[t:].tolist(), self.gamma), "values": values})
            executed, _ = self.intervener.act(obs, proposals[t])
            if np.abs(np.asarray(executed) - actions[t]).max() > 1e-4:  # the recorded action is executed anyway
                self.disagreements.append((ep["index"], t))
            obs, *_ = self.env.step(actions[t])
        return rows


_WORKER: Replayer | None = None


def _init(*args) -> None:
    global _WORKER
    _WORKER = Replayer(*args)


def _episode(ep: dict) -> tuple[list[dict], list]:
    rows = _WORKER.episode(ep)
    disagreements, _WORKER.disagreements = _WORKER.disagreements, []
    return rows, disagreements


def load_episodes(root: str) -> list[dict]:
    journal = read_journal(root)
    if any(e["source"] == SOURCE_DEMO for e in journal):
        raise SystemExit(f"{root}: holds expert demonstrations; the ceiling replays policy rollouts only")
    table = open_lerobot(root).hf_dataset.with_format("numpy")
    index, frame = np.asarray(table["episode_index"]).reshape(-1), np.asarray(table["frame_index"]).reshape(-1)
    cols = {k: np.asarray(table[c]) for k, c in (("action", "action"), ("policy_action", "policy_action"),
                                                  ("state", "observation.state"))}
    episodes = []
    for e in journal:
        rows = np.flatnonzero(index == e["episode_index"])
        rows = rows[np.argsort(frame[rows])]
        episodes.append({"index": e["episode_index"], "seed": e["seed"], "success": bool(e["success"]),
                         **{k: v[rows].astype(np.float32) for k, v in cols.items()}})
    return episodes


def scores(x: np.ndarray, rows: list[dict]) -> dict:
    ret = np.array([r["ret"] for r in rows])
    success = np.array([r["success"] for r in rows])
    pred = {"q": x, "ret": ret, "success": success, "episode": np.array([r["episode"] for r in rows])}
    ci = bootstrap_intervals(pred)
    rho, area = spearman(x, ret), auroc(x, success)  # None where undefined (one class, constant values)
    return {"spearman": None if rho is None else round(rho, 3), "auroc": None if area is None else round(area, 3),
            "ci95": {"spearman": ci["spearman_q"], "auroc": ci["auroc_q"]}}


@torch.no_grad()
def critic_scores(path: str, data: str, rows: list[dict]) -> dict:
    from critics import load_critic
    from critics.diagnostics import predict
    from critics.train import critic_dataset

    critic = load_critic(path)
    dataset = critic_dataset([data], critic.cfg, {})
    pred = predict(critic, dataset, None)
    at = {(int(e), int(t)): i for i, (e, t) in enumerate(zip(dataset.frames["episode_index"],
                                                              dataset.frames["frame_index"], strict=True))}
    x = np.array([pred["q"][at[(r["episode"], r["t"])]] for r in rows])
    return {"type": critic.type_name, "chunk_len": critic.cfg.chunk_len, **scores(x, rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a LeRobot dataset of sim rollouts (scripts/collect.py source=policy)")
    ap.add_argument("--policy", required=True, help="the policy that recorded them")
    ap.add_argument("--env", default="pick_place")
    ap.add_argument("--k", type=int, default=12, help="branched futures per chunk start")
    ap.add_argument("--chunk-len", type=int, default=None, help="recorded steps before the behaviour resumes "
                    "(default: the policy's executed steps)")
    ap.add_argument("--gamma", type=float, default=0.98)
    ap.add_argument("--scripted", nargs="*", default=[], help="intervener options the rollouts used (key=value)")
    ap.add_argument("--critic", nargs="*", default=[], help="critic checkpoints to score on the same frames")
    ap.add_argument("--episodes", type=int, default=None, help="only the first N episodes")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--write", default=None)
    args = ap.parse_args()
    scripted = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.scripted)}
    episodes = load_episodes(args.data)[: args.episodes]
    t0 = time.perf_counter()
    init = (args.env, args.policy, scripted, args.k, args.chunk_len, args.gamma)
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers, initializer=_init, initargs=init) as pool:
            done = list(pool.map(_episode, episodes))
    else:
        _init(*init)
        done = [_episode(ep) for ep in episodes]
    rows = [r for ep_rows, _ in done for r in ep_rows]
    disagreements = [list(d) for _, ds in done for d in ds]
    values = np.array([r["values"] for r in rows])
    out = {"benchmark": "critic diagnostics ceiling (Monte-Carlo E[G | s, chunk] on replayed rollouts)",
           "data": args.data, "policy": args.policy, "env": args.env, "k": args.k, "gamma": args.gamma,
           "episodes": len(episodes), "frames": len(rows), "seconds": round(time.perf_counter() - t0),
           "intervener_disagreements": disagreements,
           "ceiling": scores(values.mean(1), rows),
           "one_future": {k: v for k, v in scores(values[:, 0], rows).items() if k != "ci95"},
           "critics": {path: critic_scores(path, args.data, rows) for path in args.critic}}
    emit(out, args.write)
    if args.write:
        Path(args.write).with_suffix(".frames.json").write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
