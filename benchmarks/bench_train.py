"""Training throughput of the default sim policy through vla.train.Trainer: samples/s and peak memory.

    python benchmarks/bench_train.py                       # flow policy, state only, CPU (and CUDA if present)
    python benchmarks/bench_train.py --policy diffusion --cameras 2 --device cuda

The data is a synthetic LeRobot dataset shaped like the sim tasks (state 17, action 4,
optional 64x64 cameras), so the figure includes the data pipeline. Prints JSON, one
record per device. The first ``--warmup`` steps are not timed, nor is the final checkpoint;
samples/s is from the median step time.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synthetic_dataset(root: Path, episodes: int, length: int, cameras: int, image_size: int) -> Path:
    from vla.data import EpisodeWriter

    rng = np.random.default_rng(0)
    spec = {"observation.state": (17,)}
    for cam in ("front", "wrist")[:cameras]:
        spec[f"observation.images.{cam}"] = (image_size, image_size, 3)
    with EpisodeWriter(root, fps=10, obs_spec=spec, action_dim=4, use_videos=False) as writer:
        for _ in range(episodes):
            for t in range(length):
                obs = {k: (rng.integers(0, 255, s, dtype=np.uint8) if len(s) == 3 else
                           rng.standard_normal(s).astype(np.float32)) for k, s in spec.items()}
                obs["task"] = "reach the red ball"
                writer.add_step(obs, rng.standard_normal(4).astype(np.float32), success=t == length - 1,
                                done=t == length - 1)
            writer.end_episode("demo", seed=None)
    return root


def policy_config(name: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"policy={name}", "data=[x]", "out=x"])
    return OmegaConf.to_container(cfg.policy, resolve=True)


def measure(device: str, args, root: Path) -> dict:
    from policies import build_policy
    from vla.data import ChunkDataset, compute_stats
    from vla.train import TrainConfig, Trainer, bc_loss

    pcfg = policy_config(args.policy)
    dataset = ChunkDataset([root], chunk_len=int(pcfg["chunk_len"]))
    torch.manual_seed(0)
    policy = build_policy(pcfg, dataset.features, compute_stats(dataset))
    stamps: list[float] = []

    def clock(trainer, step, logs):
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    total = args.warmup + args.steps
    cfg = TrainConfig(steps=total, batch_size=args.batch_size, warmup_steps=0, save_every=total, log_every=total,
                      progress=False, cpu=device == "cpu", num_workers=args.num_workers)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(policy, bc_loss, dataset, cfg, out, on_step=clock)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.fit()
    # the median step resists the stalls of a shared machine; the mean is what a long run sees
    steps_s = np.diff(stamps[args.warmup - 1:])
    median = float(np.median(steps_s))
    record = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "policy": args.policy,
        "cameras": args.cameras,
        "batch_size": args.batch_size,
        "params": sum(p.numel() for p in policy.parameters()),
        "trainable_params": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "mixed_precision": trainer.accelerator.mixed_precision,
        "timed_steps": args.steps,
        "ms_per_step_median": 1000 * median,
        "ms_per_step_mean": 1000 * float(np.mean(steps_s)),
        "samples_per_s": args.batch_size / median,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        record["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="flow", help="a configs/policy entry (flow, diffusion, tiny)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cameras", type=int, default=0, choices=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"], "cuda": ["cuda"]}
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic_dataset(Path(tmp) / "data", args.episodes, 50, args.cameras, args.image_size)
        for device in devices[args.device]:
            print(json.dumps(measure(device, args, root)), flush=True)


if __name__ == "__main__":
    main()
