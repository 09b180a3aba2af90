"""Hardware-bridge figures, printed as JSON: safety filter cost per command, message size
and encode/decode time, and round trip over a local socket (policy cost excluded).

    python benchmarks/bench_bridge.py [--cameras 2] [--height 480] [--width 640] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from real_robot.client import RemoteChunkSource
from real_robot.protocol import decode, encode, parse_obs
from real_robot.safety import SafetyFilter, SafetyLimits
from real_robot.server import PolicyServer


class ZeroSource:
    """Answers instantly, so the round trip measures only the bridge."""

    def __init__(self, dim, chunk_len):
        self.action_dim, self.chunk_len, self.state_dim, self.cameras, self.name = dim, chunk_len, dim, None, "zero"

    def chunk(self, obs, last_action=None):
        return np.zeros((self.chunk_len, self.action_dim), np.float32)


def pct(xs, q):
    return round(float(np.percentile(xs, q)), 3)


def bench_safety(dim: int, n: int = 20000) -> dict:
    f = SafetyFilter(SafetyLimits(np.full(dim, -1.0), np.full(dim, 1.0), np.full(dim, 0.05), np.full(dim, 2.0)),
                     period_s=1 / 30)
    f.reset(np.zeros(dim))
    cmds = np.random.default_rng(0).uniform(-1, 1, (n, dim))
    t0 = time.perf_counter()
    for c in cmds:
        f.filter(c)
    return {"safety_filter_us": round((time.perf_counter() - t0) / n * 1e6, 2)}


def make_obs(dim, cameras, h, w):
    obs = {"observation.state": np.zeros(dim, np.float32), "task": "pick up the cube"}
    rng = np.random.default_rng(0)
    for i in range(cameras):
        obs[f"observation.images.cam{i}"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return obs


def bench_codec(obs: dict, robot: dict, n: int = 50) -> dict:
    t0 = time.perf_counter()
    for _ in range(n):
        data = encode("obs", id=1, step=0, obs=obs)
    t1 = time.perf_counter()
    for _ in range(n):
        parse_obs(decode(data, max_bytes=1 << 30), robot)  # (id, step, obs, last_action)
    t2 = time.perf_counter()
    return {"obs_message_bytes": len(data), "encode_ms": round((t1 - t0) / n * 1e3, 3),
            "decode_validate_ms": round((t2 - t1) / n * 1e3, 3)}


def bench_round_trip(obs: dict, robot: dict, requests: int, chunk_len: int) -> dict:
    source = ZeroSource(robot["action_dim"], chunk_len)
    with PolicyServer(source, port=0, max_message_bytes=64 << 20) as srv:
        client = RemoteChunkSource(srv.url, robot, fps=30, max_message_bytes=64 << 20, timeout_s=5.0)
        client.connect()
        for step in range(requests):
            client._next_id += 1
            client._exchange(client._next_id, step, client._wire_obs(obs))  # one synchronous request
        stats = client.stats
        client.close()
    return {"round_trip_ms_p50": pct(stats.rtt_ms, 50), "round_trip_ms_p95": pct(stats.rtt_ms, 95),
            "server_inference_ms_p50": pct(stats.infer_ms, 50), "requests": requests}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=6)
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--chunk-len", type=int, default=50)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    obs = make_obs(args.dim, args.cameras, args.height, args.width)
    robot = {"state_dim": args.dim, "action_dim": args.dim, "robot_type": "bench", "fps": 30,
             "cameras": {k: tuple(v.shape) for k, v in obs.items() if k.startswith("observation.images.")}}
    out = {"config": vars(args)}
    out.update(bench_safety(args.dim))
    out.update(bench_codec(obs, robot))
    out.update(bench_round_trip(obs, robot, args.requests, args.chunk_len))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
