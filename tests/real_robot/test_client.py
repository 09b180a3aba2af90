"""Robot client against a real local server: chunks ahead of time, a stalled server makes the
arm hold within two control periods, a restarted server is picked up again without a jump,
and a policy that does not fit the robot is refused before any motion."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from real_robot.client import LinkError, RemoteChunkSource, robot_spec
from real_robot.control import ControlLoop, FakeClock, SystemClock
from real_robot.run import deploy_robot
from real_robot.safety import SafetyFilter, SafetyLimits
from real_robot.server import PolicyServer
from vla.errors import ConfigError, ShapeError

DIM = 3
STEP = 0.05


def make_client(url, arm, **kw):
    spec = robot_spec(arm.obs_spec, arm.action_dim, arm.robot_type, arm.fps)
    kw.setdefault("timeout_s", 0.5)
    return RemoteChunkSource(url, spec, fps=arm.fps, **kw)


def make_safety():
    return SafetyFilter(SafetyLimits(np.full(DIM, -1.0), np.full(DIM, 1.0), np.full(DIM, STEP)), period_s=0.02)


def test_chunks_are_executed_and_requested_ahead(fakes):
    arm = fakes.FakeArm(dim=DIM, camera=(8, 8, 3))
    source = fakes.RampSource(dim=DIM, chunk_len=10, target=0.5, rate=0.01)
    with PolicyServer(source, port=0) as srv:
        client = make_client(srv.url, arm, execute_steps=5)
        loop = ControlLoop(arm, client, make_safety(), fps=arm.fps, clock=SystemClock())
        loop.keep_trace = True
        try:
            res = loop.run_episode(max_steps=60)
        finally:
            client.close()
    assert source.resets == 1 and source.calls >= 60 // 10  # re-planned well before each chunk ran out
    fresh = sum(t["fresh"] for t in loop.trace)
    assert fresh >= 55, f"only {fresh} of 60 ticks had a planned action ({res.holds} holds)"
    assert client.stats.chunks == source.calls and client.stats.rtt_ms and client.stats.infer_ms
    np.testing.assert_allclose(arm.sent[-1], 0.5, atol=1e-5)  # the ramp arrived at its target


def test_client_follows_the_servers_receding_horizon_unless_told_otherwise(fakes):
    arm = fakes.FakeArm(dim=DIM)
    calls = {}
    for own in (None, 10):
        source = fakes.RampSource(dim=DIM, chunk_len=10, target=0.5, rate=0.01)
        source.execute_steps = 2  # the hosted policy's own setting, advertised at hello
        with PolicyServer(source, port=0) as srv:
            client = make_client(srv.url, arm, execute_steps=own)
            loop = ControlLoop(arm, client, make_safety(), fps=arm.fps, clock=SystemClock())
            try:
                loop.run_episode(max_steps=40)
            finally:
                client.close()
        assert client.policy["execute_steps"] == 2
        calls[own] = source.calls
    assert calls[None] >= 15, calls  # re-planned about every 2 steps
    assert calls[10] <= 10, calls  # the client's own setting wins


def test_stalled_server_makes_the_arm_hold_within_two_periods(fakes):
    arm = fakes.FakeArm(dim=DIM)
    source = fakes.StallingSource(serve=1, dim=DIM, chunk_len=8, rate=0.01)
    srv = PolicyServer(source, port=0).start()
    client = make_client(srv.url, arm, timeout_s=0.2)
    # the fake clock runs the loop far faster than the server could answer: only the first
    # chunk (asked for at the episode start) ever arrives
    loop = ControlLoop(arm, client, make_safety(), fps=arm.fps, clock=FakeClock())
    loop.keep_trace = True
    try:
        res = loop.run_episode(max_steps=30)
    finally:
        source.release.set()
        client.close()
        srv.stop()
    fresh = [t["step"] for t in loop.trace if t["fresh"]]
    assert fresh == list(range(8))
    first_hold = next(i for i, t in enumerate(loop.trace) if t["hold"])
    periods = (loop.trace[first_hold]["t"] - loop.trace[7]["t"]) / loop.period
    assert periods <= 2 + 1e-9 and res.holds == 30 - 8 - 1
    sent = np.stack(arm.sent)
    np.testing.assert_array_equal(sent[8:], np.repeat(sent[7:8], 22, axis=0))  # held, no creeping


def test_client_survives_a_server_restart_without_a_jump(fakes):
    arm = fakes.FakeArm(dim=DIM)
    first = fakes.RampSource(dim=DIM, chunk_len=10, target=0.3, rate=0.01, name="a")
    # the restarted server proposes big jumps; the safety filter must spread them out
    second = fakes.RampSource(dim=DIM, chunk_len=10, target=-0.8, rate=0.4, name="a")
    srv = PolicyServer(first, port=0).start()
    port = srv.port
    restarted: list[PolicyServer] = []

    def restart():
        srv.stop()
        time.sleep(0.4)
        restarted.append(PolicyServer(second, port=port).start())

    arm.on_send = lambda i: threading.Thread(target=restart).start() if i == 20 else None
    client = make_client(srv.url, arm, execute_steps=5, timeout_s=0.3, reconnect_s=(0.02, 0.1))
    loop = ControlLoop(arm, client, make_safety(), fps=arm.fps, clock=SystemClock())
    loop.keep_trace = True
    try:
        res = loop.run_episode(max_steps=150)
    finally:
        client.close()
        for s in restarted:
            s.stop()
    trace = loop.trace
    assert res.steps == 150 and res.holds > 0, "the outage should have made the arm hold"
    last_hold = max(i for i, t in enumerate(trace) if t["hold"])
    assert any(t["fresh"] for t in trace[last_hold:]), "no fresh actions after the restart"
    assert second.calls > 0 and client.stats.reconnects >= 1
    steps = np.abs(np.diff(np.stack([arm.start] + arm.sent), axis=0))
    assert steps.max() <= STEP + 1e-6
    assert loop.safety.counts["clip_step"] > 0  # the new server's jumps were clipped, not executed


def test_policy_that_does_not_fit_is_refused_before_motion(fakes):
    arm = fakes.FakeArm(dim=DIM)
    with PolicyServer(fakes.RampSource(dim=DIM + 1), port=0) as srv:
        cfg = {"deploy": {"server": {"url": srv.url}, "episodes": 1, "max_steps": 5, "listen_keys": False},
               "robot": {"limits": {"max_step": STEP}}}
        with pytest.raises(ShapeError, match="action size 3 != policy action size 4"):
            deploy_robot(cfg, robot=arm, recorder=fakes.MemoryRecorder())
    assert arm.sent == []


def test_token_and_reachability_errors(fakes):
    arm = fakes.FakeArm(dim=DIM)
    with PolicyServer(fakes.RampSource(dim=DIM), port=0, token="abc") as srv:
        with pytest.raises(LinkError, match="unauthenticated"):
            make_client(srv.url, arm, token="nope").connect()
        client = make_client(srv.url, arm, token="abc")
        assert client.connect()["name"] == "ramp"
        client.close()
    with pytest.raises(LinkError, match="policy server"):
        make_client("ws://127.0.0.1:9", arm, connect_timeout_s=0.5).connect()
    with pytest.raises(ConfigError, match="ws://"):
        make_client("http://127.0.0.1:9", arm)
