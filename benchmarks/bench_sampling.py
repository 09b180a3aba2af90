"""Decision latency of best-of-N sampling with the VLA policy: shared prefix vs the naive ways.

For N = 1, 4, 16, 64 candidates for ONE observation, times a full decision:

  cached      encode once, then sample(n=N): one batched expert pass per denoising step
              that reuses the prefix keys/values (the way the toolkit samples)
  reproject   encode once, sample(n=N, use_cache=False): the prefix K/V re-projected for
              every candidate and step
  plain_batch the observation repeated N times, encoded and sampled as a batch of N
  naive       N separate full decisions (encode + sample(n=1)), one after the other

Latencies in ms: wall time (median and minimum over --repeats) and process CPU time
(minimum). The ratios to ``cached`` at N=1 use the CPU time when running on one CPU thread
(--threads 1: on a shared machine, other processes then do not distort them), else the
minimum wall time; ``ratio_clock`` says which. Peak memory: CUDA
max_memory_allocated per N; on the CPU the process's peak RSS so far (monotone).
Prints JSON (and writes it to --out if given).

    python benchmarks/bench_sampling.py                    # default sim model, CPU, both heads
    python benchmarks/bench_sampling.py --device cuda --cameras front,wrist
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import build_policy  # noqa: E402


def load_policy_cfg(name: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(
        config_dir=str(Path(__file__).resolve().parents[1] / "configs/policy"), version_base=None
    ):
        return OmegaConf.to_container(compose(config_name=name), resolve=True)


def timed(fn, repeats: int, device: torch.device) -> tuple[float, float, float]:
    """Median and minimum wall time, and minimum process CPU time, of fn() in ms (after a warm-up)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), min(wall), min(cpu)


def decision_ways(policy, one: dict, many: dict, n: int) -> dict:
    """The four ways to get N candidate chunks for one observation (see the module docstring)."""

    def naive():
        for _ in range(n):
            policy.sample(policy.encode(one), 1)

    return {
        "cached": lambda: policy.sample(policy.encode(one), n),
        "reproject": lambda: policy.sample(policy.encode(one), n, use_cache=False),
        "plain_batch": lambda: policy.sample(policy.encode(many), 1),
        "naive": naive,
    }


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux: KiB


def bench_head(head: str, args, device: torch.device) -> dict:
    cfg = load_policy_cfg(args.config)
    cfg["head"] = head
    feats = {"observation.state": (args.state_dim,), "action": (args.action_dim,)}
    for cam in filter(None, args.cameras.split(",")):
        feats[f"observation.images.{cam}"] = (3, args.image_size, args.image_size)
    stats = {k: {"mean": [0.0] * v[0], "std": [1.0] * v[0]} for k, v in feats.items() if len(v) == 1}
    policy = build_policy(cfg, feats, stats).to(device).eval()
    H, Da = policy.chunk_len, policy.action_dim

    def obs(b: int) -> dict:
        o = {k: torch.rand(b, *shape, device=device) for k, shape in feats.items() if k != "action"}
        o["task"] = ["pick up the red cube and place it in the bowl"] * b
        return o

    one = obs(1)
    median, best, cpu, memory = {}, {}, {}, {}
    for n in args.ns:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        median[n], best[n], cpu[n] = {}, {}, {}
        with torch.inference_mode():
            for way, fn in decision_ways(policy, one, obs(n), n).items():
                if way == "naive" and n > args.naive_max_n:
                    continue
                reps = max(3, args.repeats // n) if way == "naive" else args.repeats
                median[n][way], best[n][way], cpu[n][way] = timed(fn, reps, device)
        memory[str(n)] = round(peak_memory_mib(device), 1)
    # One CPU thread: process CPU time is the latency the decision would have on an idle core, and
    # unlike wall time it does not count the time other processes hold the core.
    use_cpu = device.type == "cpu" and torch.get_num_threads() == 1
    ref = cpu if use_cpu else best
    base = ref[args.ns[0]]["cached"]
    return {
        "chunk_len": H,
        "action_dim": Da,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "steps": policy.cfg.flow.num_steps if head == "flow" else policy.cfg.diffusion.num_inference_steps,
        "latency_ms_median": {str(n): {k: round(v, 2) for k, v in r.items()} for n, r in median.items()},
        "latency_ms_min": {str(n): {k: round(v, 2) for k, v in r.items()} for n, r in best.items()},
        "cpu_ms_min": {str(n): {k: round(v, 2) for k, v in r.items()} for n, r in cpu.items()},
        "ratio_clock": "cpu_ms_min" if use_cpu else "latency_ms_min",
        "ratio_to_cached_n1": {str(n): {k: round(v / base, 2) for k, v in r.items()} for n, r in ref.items()},
        "peak_memory_mib": memory,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", default="flow", help="a configs/policy/ name (the default sim model: flow)")
    ap.add_argument("--heads", default="flow,diffusion")
    ap.add_argument("--ns", default="1,4,16,64")
    ap.add_argument("--state-dim", type=int, default=20, help="sim tasks: arm state + object features")
    ap.add_argument("--action-dim", type=int, default=4, help="sim tasks: TCP target xyz + gripper")
    ap.add_argument("--cameras", default="", help="comma-separated camera names (default: state only)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--naive-max-n", type=int, default=64, help="skip the naive way above this N")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.ns = [int(n) for n in args.ns.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    result = {
        "benchmark": "bench_sampling",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "config": args.config,
        "features": {
            "state_dim": args.state_dim,
            "action_dim": args.action_dim,
            "cameras": args.cameras,
            "image_size": args.image_size if args.cameras else None,
        },
        "heads": {h: bench_head(h, args, device) for h in args.heads.split(",")},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
