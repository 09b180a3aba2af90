"""How much can best-of-N re-ranking lift a policy at all? The ceiling, with a perfect-information critic.

Each decision samples N chunks from the policy, as the re-ranker does; each candidate is then
scored by *simulating* it from a snapshot of the episode (``ArmEnv.snapshot``) and letting the
policy itself finish the episode: 1 for a success, minus a small cost per step (a one-sample
Monte-Carlo value of the candidate under the policy). The best one is executed. A learned
critic can at most match this (up to the sampling noise of the one-sample values), so when
the ceiling sits close to the base, no critic can give re-ranking a large gain on that policy
and task.

    OMP_NUM_THREADS=1 python benchmarks/bench_rerank_ceiling.py --policy <ckpt> [--env pick_place] \
        [--n 16] [--episodes 30] [--seed 10000] [--record <sets.pt>] [--write <json>]

Prints JSON: the success of the policy alone and with the Monte-Carlo oracle on the same seeds
(95% Wilson intervals), and the seconds taken. Costly: N rollouts to the episode's end per decision.

``--record`` keeps every decision's candidate set with the oracle's values (observation, the N
chunks, their one-sample values). Learned critics are then judged against the sets in seconds,
on the question re-ranking asks (which of these candidates, at this state?), without a simulator:

    python benchmarks/bench_rerank_ceiling.py --sets <sets.pt> --critic <critic> [<critic> ...]

For each critic: the mean oracle value of the candidate it ranks first (``picked``), against a
random candidate (``random``, the policy alone) and the best one (``best``; an optimistic figure,
a maximum of one-sample values), and ``gap_closed`` = (picked - random) / (best - random).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from common import emit

import sim
from critics.rerank import RerankConfig, Reranker
from policies import load_policy
from vla.agent import ChunkAgent, execute_steps_for
from vla.errors import ShapeError
from vla.rollout import run_episode, wilson_interval

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class MonteCarloOracle:
    """A "critic" that scores candidates by simulating them (E = 1): ``q(obs, chunks) -> (1, 1, N)``."""

    def __init__(self, env, policy, execute: int, seed: int = 0, step_cost: float = 1e-3, record: bool = False):
        self.env, self.execute, self.step_cost = env, execute, step_cost
        self.chunk_len, self.action_dim = policy.chunk_len, policy.action_dim
        self.inner = ChunkAgent(policy, execute)
        self.rng = np.random.default_rng(seed)
        self.sets: list[dict] | None = [] if record else None  # labelled candidate sets (--record)

    def value(self, chunk: np.ndarray) -> float:
        """1 for a success (minus a small cost per step), 0 otherwise: ``chunk``, then the policy."""
        env, steps, obs = self.env, 0, None
        for a in chunk[: self.execute]:
            obs, _, success, truncated, _ = env.step(a)
            steps += 1
            if success or truncated:
                return float(success) - self.step_cost * steps
        self.inner.reset(int(self.rng.integers(1 << 31)))
        while True:
            obs, _, success, truncated, _ = env.step(self.inner.act(obs))
            steps += 1
            if success or truncated:
                return float(success) - self.step_cost * steps

    @torch.no_grad()
    def q(self, obs, chunks: torch.Tensor) -> torch.Tensor:
        if chunks.shape[0] != 1:
            raise ShapeError("the Monte-Carlo oracle scores one observation at a time")
        snap = self.env.snapshot()
        scores = []
        for chunk in chunks[0].cpu().numpy():
            scores.append(self.value(chunk))
            self.env.restore(snap)
        values = torch.tensor(scores)
        if self.sets is not None:
            self.sets.append({"obs": {k: v.cpu().clone() if torch.is_tensor(v) else list(v) for k, v in obs.items()},
                              "chunks": chunks[0].cpu().clone(), "values": values})
        return values[None, None]


def run(policy_path: str, env_name: str, n: int, episodes: int, seed: int, record: str | None = None) -> dict:
    policy = load_policy(policy_path)
    env = sim.make_from_config(yaml.safe_load((CONFIGS / "env" / f"{env_name}.yaml").read_text()))
    execute = execute_steps_for(policy, None)
    if not hasattr(env.unwrapped, "snapshot"):
        raise SystemExit(f"{env_name}: the oracle needs one of the sim tasks (ArmEnv.snapshot / restore)")
    oracle = MonteCarloOracle(env.unwrapped, policy, execute, seed, record=record is not None)
    seeds = list(range(seed, seed + episodes))
    out = {}
    for label, planner in (("policy", None), (f"oracle_best_of_{n}", Reranker(
            policy, oracle, RerankConfig(n=n, span="chunk", aggregate="mean")))):
        t0, wins = time.perf_counter(), []
        for s in seeds:
            if planner is not None:
                planner.reseed(s)
            wins.append(bool(run_episode(env, ChunkAgent(policy, execute, planner=planner), seed=s).success))
        out[label] = {"success_rate": float(np.mean(wins)), "ci95": [round(x, 3) for x in wilson_interval(sum(wins), len(wins))],
                      "seconds": round(time.perf_counter() - t0)}
    env.close()
    if record:
        torch.save({"env": env_name, "policy_path": policy_path, "seeds": [seeds[0], seeds[-1]], "n": n,
                    "execute_steps": execute, "sets": oracle.sets}, record)
        out["recorded_sets"] = {"path": record, "decisions": len(oracle.sets)}
    return {"benchmark": "re-ranking ceiling (Monte-Carlo oracle critic)", "env": env_name, "policy_path": policy_path,
            "n": n, "episodes": episodes, "seeds": [seeds[0], seeds[-1]], "execute_steps": execute, **out}


@torch.no_grad()
def score_critics(sets_path: str, critic_paths: list[str]) -> dict:
    """How well each critic picks among the recorded candidate sets (see the module doc)."""
    from critics import load_critic

    if not Path(sets_path).is_file():
        raise SystemExit(f"{sets_path}: no such file (record one with --policy ... --record {sets_path})")
    recorded = torch.load(sets_path, weights_only=False)
    sets = recorded["sets"]
    if not sets:
        raise SystemExit(f"{sets_path}: no candidate sets recorded")
    values = torch.stack([s["values"] for s in sets])  # (D, N)
    random, best = float(values.mean()), float(values.max(1).values.mean())
    gap = best - random
    out = {"sets": sets_path, "env": recorded["env"], "policy_path": recorded["policy_path"],
           "decisions": len(sets), "random": round(random, 4), "best": round(best, 4), "critics": {}}
    for path in critic_paths:
        critic = load_critic(path)
        picked = []
        for s in sets:
            q = critic.aggregate(critic.q(s["obs"], s["chunks"][None]))[0]  # (N,)
            picked.append(float(s["values"][int(q.argmax())]))
        p = float(np.mean(picked))
        out["critics"][path] = {"type": critic.type_name, "picked": round(p, 4),
                                "gap_closed": round((p - random) / gap, 3) if gap > 0 else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", help="the policy checkpoint (the oracle run)")
    ap.add_argument("--env", default="pick_place")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=10000)
    ap.add_argument("--record", default=None, help="save the oracle's labelled candidate sets here (.pt)")
    ap.add_argument("--sets", default=None, help="score critics on recorded candidate sets instead")
    ap.add_argument("--critic", nargs="+", default=[], help="with --sets: critic checkpoints to score")
    ap.add_argument("--write", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.sets:
        if not args.critic:
            ap.error("--sets needs --critic <checkpoint> [...]")
        emit(score_critics(args.sets, args.critic), args.write)
        return
    if not args.policy:
        ap.error("--policy is required (or --sets with --critic)")
    emit(run(args.policy, args.env, args.n, args.episodes, args.seed, args.record), args.write)


if __name__ == "__main__":
    main()
