"""Latency of a re-ranked decision (N candidates sampled behind one encoding, scored by the critic)
and the control rate System 1 of the dual system sustains, with the default sim models.

    OMP_NUM_THREADS=1 python benchmarks/bench_rerank.py [--device cuda] [--repeats 30]

Weights are untrained (latency does not depend on them). Prints JSON: median ms per decision
for N = 1, 4, 16, 64 with the ratio to N = 1, and System 1 steps per second (S1 re-plans every
step: the worst case), next to a System 2 decision.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from critics import build_critic
from critics.rerank import RerankConfig, Reranker
from policies import build_policy
from policies.hume import DualSystemAgent, DualSystemConfig
from vla.data import obs_to_batch
from vla.train import set_threads

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DS, DA = 17, 4  # the sim tasks: state (proprioception + objects), ee action


def stats(d):
    return {"mean": [0.0] * d, "std": [1.0] * d, "min": [-1.0] * d, "max": [1.0] * d}


def median_ms(fn, repeats: int) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(3):  # warm-up (CUDA start, allocator, library handles)
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()  # a decision ends when its chunk exists, not when its kernels are queued
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    set_threads(0, args.device)
    torch.manual_seed(0)
    features = {"observation.state": (DS,), "action": (DA,)}
    st = {"observation.state": stats(DS), "action": stats(DA)}
    policy_cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "policy/flow.yaml"), resolve=True)
    # as scripts/train.py env=<task> builds it: one token per object
    policy_cfg["model"]["state_layout"] = OmegaConf.load(CONFIGS / "env/pick_place.yaml").state_layout
    policy = build_policy(policy_cfg, features, st).to(args.device).eval()
    critic_cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "critic/aloe.yaml"))
    critic = build_critic(critic_cfg, features, st, policy=policy).to(args.device).eval()
    obs = {"observation.state": np.zeros(DS, np.float32), "task": "put the red cube in the bin"}
    batch = obs_to_batch([obs], args.device)

    rerank = {}
    for n in (1, 4, 16, 64):
        r = Reranker(policy, critic, RerankConfig(n=n))
        rerank[n] = median_ms(lambda r=r: r.choose(batch), args.repeats)
    s1_cfg = {**policy_cfg, "chunk_len": 8, "execute_steps": 2,
              "model": {**policy_cfg["model"], "d_model": 64, "expert_layers": 2, "expert_width": 64}}
    s1 = build_policy(s1_cfg, features, st).to(args.device).eval()
    dual = DualSystemAgent(policy, critic, s1, DualSystemConfig(s1_every=1, s2_every=16), device=args.device)
    dual.reset(seed=0)
    s1_ms = median_ms(lambda: dual.system1(obs, None), args.repeats)
    s2_ms = median_ms(lambda: dual.system2(obs, torch.Generator().manual_seed(0)), max(5, args.repeats // 3))
    print(json.dumps({
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "torch_threads": torch.get_num_threads(),
        "rerank_decision_ms": {str(n): round(v, 2) for n, v in rerank.items()},
        "rerank_ratio_to_n1": {str(n): round(v / rerank[1], 2) for n, v in rerank.items()},
        "system1_plan_ms": round(s1_ms, 2),
        "system1_hz_replanning_every_step": round(1000 / s1_ms, 1),
        "system2_decision_ms": round(s2_ms, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
