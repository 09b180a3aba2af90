"""The control loop with its guards: watchdog holds, emergency stop, takeover and recording."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from real_robot.control import AgentSource, ControlLoop, FakeClock, OperatorEvents
from real_robot.guards import EmergencyStop, KeyBindings, Watchdog
from real_robot.safety import SafetyFilter, SafetyLimits
from real_robot.teleop import JointPositionMap, TeleopIntervener, Toggle
from vla.errors import ShapeError

DIM = 3


def make_safety(step=0.05):
    return SafetyFilter(SafetyLimits(np.full(DIM, -1.0), np.full(DIM, 1.0), np.full(DIM, step)), period_s=0.02)


class ListSource:
    """Proposes the given actions, then nothing (as a stalled server would)."""

    def __init__(self, actions):
        self.actions = [np.asarray(a, np.float32) for a in actions]
        self.started = 0

    def start_episode(self, obs):
        self.started += 1

    def next_action(self, obs, step):
        return self.actions[step] if step < len(self.actions) else None

    def close(self):
        pass


def test_watchdog_holds_within_two_periods():
    clock = FakeClock()
    w = Watchdog(0.03, clock.now)
    clock.sleep(0.02)
    assert not w.expired()
    clock.sleep(0.02)
    assert w.expired() and w.expirations == 1
    assert w.expired() and w.expirations == 1  # one expiry per outage
    w.feed()
    assert not w.expired()


def test_loop_holds_position_when_actions_stop(fakes):
    arm = fakes.FakeArm(dim=DIM)
    ramp = [np.full(DIM, 0.04 * (i + 1)) for i in range(10)]
    loop = ControlLoop(arm, ListSource(ramp), make_safety(), fps=50, clock=FakeClock())
    loop.keep_trace = True
    res = loop.run_episode(max_steps=20)
    last_fresh = max(t["step"] for t in loop.trace if t["fresh"])
    first_hold = min(i for i, t in enumerate(loop.trace) if t["hold"])
    assert last_fresh == 9
    # the deadline is 1.5 periods: the hold starts at the 2nd tick without a fresh action
    assert res.holds > 0 and res.holds == 20 - 10 - 1
    assert first_hold - last_fresh <= 2
    sent = np.stack(arm.sent)
    np.testing.assert_allclose(sent[10:], np.repeat(sent[9:10], 10, axis=0))  # held still, no drift


def test_estop_stops_sending_at_once(fakes):
    arm = fakes.FakeArm(dim=DIM)
    estop = EmergencyStop()
    arm.on_send = lambda i: estop.trigger("test") if i == 4 else None
    loop = ControlLoop(arm, ListSource([np.full(DIM, 0.01)] * 50), make_safety(), fps=50, clock=FakeClock(),
                       estop=estop)
    res = loop.run_episode(max_steps=50)
    assert res.ended_by == "estop" and len(arm.sent) == 5 and res.steps == 5


def test_estop_from_a_signal_and_a_key():
    estop = EmergencyStop()
    estop.install_signal_handlers((signal.SIGUSR1,))
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert estop.is_set and "SIGUSR1" in estop.reason
    finally:
        estop.uninstall_signal_handlers()
    estop2 = EmergencyStop()
    keys = KeyBindings({"esc": lambda: estop2.trigger("key esc")})

    class Key:  # pynput's special keys carry a name, character keys a char
        name = "esc"
        char = None

    keys._on_press(Key())
    assert estop2.is_set


def test_takeover_is_recorded_with_the_policy_proposal(fakes):
    arm = fakes.FakeArm(dim=DIM)
    toggle = Toggle()
    leader = fakes.ScriptedLeader(arm.joint_names, [-0.5, 0.5, 0.0])
    arm.on_send = lambda i: toggle.set(10 <= i + 1 < 30)  # a person holds the toggle on ticks 10..29
    rec = fakes.MemoryRecorder()
    proposals = [np.full(DIM, 0.3)] * 40
    loop = ControlLoop(arm, ListSource(proposals), make_safety(), fps=50, clock=FakeClock(),
                       intervener=TeleopIntervener(leader, JointPositionMap(arm.joint_names), toggle),
                       recorder=rec, episode_source="policy:test")
    res = loop.run_episode(max_steps=40)
    source, steps = rec.episodes[0]
    assert source == "policy:test" and len(steps) == 40
    flags = [s["intervention"] for s in steps]
    assert flags == [False] * 10 + [True] * 20 + [False] * 10 and res.interventions == 20
    for s in steps:
        np.testing.assert_allclose(s["policy_action"], 0.3)  # the proposal kept, also during takeover
    # the person's pose is reached step by step, never in one jump
    actions = np.stack([s["action"] for s in steps])
    assert np.abs(np.diff(actions, axis=0)).max() <= 0.05 + 1e-6
    np.testing.assert_allclose(actions[29], [-0.5, 0.5, 0.0], atol=1e-6)
    assert steps[-1]["done"] and not steps[0]["done"]


def test_operator_events_end_and_rerecord(fakes):
    arm = fakes.FakeArm(dim=DIM)
    events = OperatorEvents()
    rec = fakes.MemoryRecorder()
    arm.on_send = lambda i: events.mark("success") if i == 3 else None
    loop = ControlLoop(arm, ListSource([np.zeros(DIM)] * 9), make_safety(), fps=50, clock=FakeClock(),
                       recorder=rec, events=events)
    res = loop.run_episode(max_steps=9)
    assert res.ended_by == "success" and res.success and len(rec.episodes[0][1]) == 4
    assert rec.episodes[0][1][-1]["success"]
    arm.sent.clear()
    arm.on_send = lambda i: events.mark("rerecord") if i == 2 else None
    res = loop.run_episode(max_steps=9)
    assert res.ended_by == "rerecord" and rec.discarded == 1 and len(rec.episodes) == 1
    with pytest.raises(ValueError):
        events.mark("explode")


def test_agent_source_and_shape_check(fakes):
    class Agent:
        def __init__(self):
            self.resets = 0

        def reset(self, seed=None):
            self.resets += 1

        def act(self, obs):
            return obs["observation.state"] + 0.01

    agent = Agent()
    arm = fakes.FakeArm(dim=DIM)
    loop = ControlLoop(arm, AgentSource(agent), make_safety(), fps=50, clock=FakeClock())
    res = loop.run_episode(max_steps=5)
    assert agent.resets == 1 and res.holds == 0
    np.testing.assert_allclose(arm.sent[-1], 0.05, atol=1e-6)
    class Failing(Agent):
        def act(self, obs):
            from vla.errors import DataError

            raise DataError("policy produced a NaN or infinite action")

    loop = ControlLoop(arm, AgentSource(Failing()), make_safety(), fps=50, clock=FakeClock())
    res = loop.run_episode(max_steps=5)
    assert res.holds >= 3 and loop.source.failures == 5 and res.safety["hold"] == res.holds
    wrong = ControlLoop(fakes.FakeArm(dim=DIM + 1), AgentSource(agent), make_safety(), fps=50, clock=FakeClock())
    with pytest.raises(ShapeError, match="safety limits"):
        wrong.run_episode(max_steps=1)
