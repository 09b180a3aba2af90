"""The safety layer: fuzzed with adversarial commands, nothing outside the limits reaches the motors."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from real_robot.control import ControlLoop, FakeClock
from real_robot.safety import SafetyFilter, SafetyLimits
from vla.errors import ConfigError, ShapeError

DIM = 6
LOW = np.array([-2.0, -1.5, -1.0, -3.0, -0.5, 0.0])
HIGH = np.array([2.0, 1.5, 1.0, 3.0, 0.5, 1.0])
STEP = np.array([0.05, 0.05, 0.04, 0.1, 0.02, 0.2])
VEL = np.array([1.0, 1.0, 0.8, 2.0, 0.4, 5.0])  # per second; 50 Hz -> 0.02 .. 0.1 per tick
TOL = 1e-5  # float32 rounding of what is sent


def adversarial(rng: np.random.Generator, ref: np.ndarray):
    """One random command of a random kind: good, near, jump, huge, NaN/inf, wrong shape, junk."""
    kind = rng.integers(12)
    if kind == 0:
        return rng.uniform(LOW, HIGH)  # anywhere in range: usually a jump
    if kind == 1:
        return ref + rng.normal(0, 0.01, DIM)  # a smooth, plausible step
    if kind == 2:
        return ref + rng.choice([-1, 1], DIM) * rng.uniform(0.5, 50, DIM)  # sudden jump
    if kind == 3:
        return rng.choice([-1, 1], DIM) * 10.0 ** rng.uniform(3, 300, DIM)  # huge values
    if kind == 4:
        x = rng.uniform(LOW, HIGH)
        x[rng.integers(DIM)] = rng.choice([np.nan, np.inf, -np.inf])
        return x
    if kind == 5:
        return np.full(DIM, np.nan)
    if kind == 6:
        return rng.uniform(-1, 1, rng.choice([0, 1, DIM - 1, DIM + 1, 2 * DIM]))  # wrong length
    if kind == 7:
        return rng.uniform(-1, 1, (2, DIM))  # wrong rank
    if kind == 8:
        return [None, "a", {}, "1e9", object()][rng.integers(5)]  # junk
    if kind == 9:
        return np.float64(rng.uniform(-1, 1))  # a scalar
    if kind == 10:
        return (ref + rng.uniform(-0.2, 0.2, DIM)).astype(np.float16)  # other dtype, fine if finite
    return np.clip(ref + rng.uniform(-STEP, STEP), LOW, HIGH)  # exactly within limits


def check_motion(goals: np.ndarray, start: np.ndarray, max_step: np.ndarray) -> None:
    goals = np.asarray(goals, dtype=np.float64)
    assert np.isfinite(goals).all()
    assert (goals >= LOW - TOL).all() and (goals <= HIGH + TOL).all()
    steps = np.abs(np.diff(np.vstack([start, goals]), axis=0))
    assert (steps <= max_step + TOL).all(), f"largest step {steps.max(axis=0)} > {max_step}"


def test_fuzz_filter_with_irregular_ticks():
    """10,000 adversarial commands at irregular times: every goal is finite, inside the joint
    limits, and within min(max_step, max_velocity * dt) of the previous goal."""
    rng = np.random.default_rng(0)
    clock = FakeClock()
    f = SafetyFilter(SafetyLimits(LOW, HIGH, STEP, VEL), period_s=0.02, clock=clock.now)
    start = rng.uniform(LOW, HIGH)
    prev = f.reset(start).astype(np.float64)
    logging.getLogger("real_robot.safety").setLevel(logging.ERROR)  # 10k warnings would only slow this
    try:
        for _ in range(10_000):
            dt = float(rng.choice([0.0, 0.001, 0.02, 0.02, 0.02, 0.05, 1.0]))
            clock.sleep(dt)
            goal = f.filter(adversarial(rng, prev)).astype(np.float64)
            assert goal.shape == (DIM,) and np.isfinite(goal).all()
            assert (goal >= LOW - TOL).all() and (goal <= HIGH + TOL).all()
            assert (np.abs(goal - prev) <= np.minimum(STEP, VEL * dt) + TOL).all()
            prev = goal
    finally:
        logging.getLogger("real_robot.safety").setLevel(logging.NOTSET)
    c = f.counts
    assert c["commands"] == 10_000
    # every kind of event happened and was counted
    for key in ("passed", "clip_joint_limit", "clip_step", "clip_velocity", "reject_shape", "reject_nonfinite"):
        assert c[key] > 100, (key, dict(c))


class FuzzSource:
    """An ActionSource that proposes adversarial commands (and sometimes nothing)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.ref = np.zeros(DIM)

    def start_episode(self, obs):
        pass

    def next_action(self, obs, step):
        if self.rng.random() < 0.05:
            return None
        self.ref = obs["observation.state"]
        return adversarial(self.rng, self.ref)

    def close(self):
        pass


def test_fuzz_through_control_loop_to_motors(fakes, caplog):
    """The same adversarial stream through the whole loop: what the arm receives stays in limits."""
    arm = fakes.FakeArm(dim=DIM, start=np.zeros(DIM), fps=50)
    arm.limits = (LOW, HIGH)
    clock = FakeClock()
    safety = SafetyFilter(SafetyLimits(LOW, HIGH, STEP, VEL), period_s=0.02)
    loop = ControlLoop(arm, FuzzSource(1), safety, fps=50, clock=clock)
    with caplog.at_level(logging.ERROR, logger="real_robot"):
        res = loop.run_episode(max_steps=10_000)
    assert res.steps == 10_000 and len(arm.sent) == 10_000
    check_motion(np.stack(arm.sent), arm.start, np.minimum(STEP, VEL * 0.02))
    assert safety.counts["reject_shape"] > 0 and safety.counts["reject_nonfinite"] > 0


def test_start_outside_limits_moves_inwards_without_jump():
    f = SafetyFilter(SafetyLimits(LOW, HIGH, STEP), period_s=0.02, clock=FakeClock().now)
    start = HIGH + 0.3
    prev = f.reset(start)
    for _ in range(30):
        goal = f.filter(np.zeros(DIM))
        assert (np.abs(goal - prev) <= STEP + TOL).all()
        assert (goal <= prev + TOL).all()  # never further out
        prev = goal
    assert (prev <= HIGH + TOL).all()


def test_counts_and_logs_each_kind(caplog):
    f = SafetyFilter(SafetyLimits(LOW, HIGH, STEP), period_s=0.02, clock=FakeClock().now)
    f.reset(np.zeros(DIM))
    with caplog.at_level(logging.DEBUG, logger="real_robot.safety"):
        f.filter(np.full(DIM, np.nan))
        f.filter(np.zeros(DIM + 1))
        f.filter(np.full(DIM, 100.0))
        f.hold("test")
    assert f.counts["reject_nonfinite"] == 1 and f.counts["reject_shape"] == 1
    assert f.counts["clip_joint_limit"] == 1 and f.counts["clip_step"] == 1 and f.counts["hold"] == 1
    text = caplog.text
    for word in ("reject_nonfinite", "reject_shape", "clip_joint_limit", "clip_step", "hold"):
        assert word in text


def box_fk(q):
    return np.asarray(q[:3], dtype=np.float64)  # the first three joints are the tool position


def test_workspace_box_pulls_goals_back():
    limits = SafetyLimits(LOW, HIGH, np.full(DIM, 1.0), workspace_low=[-0.5, -0.5, 0.0],
                          workspace_high=[0.5, 0.5, 0.5], forward_kinematics=box_fk)
    f = SafetyFilter(limits, period_s=0.02, clock=FakeClock().now)
    f.reset(np.zeros(DIM))
    rng = np.random.default_rng(3)
    for _ in range(500):
        goal = f.filter(rng.uniform(LOW, HIGH))
        xyz = box_fk(goal)
        assert (xyz >= [-0.5 - 1e-3, -0.5 - 1e-3, -1e-3]).all() and (xyz <= 0.5 + 1e-3).all()
    assert f.counts["clip_workspace"] > 0


def test_workspace_start_outside_never_gets_further_out():
    limits = SafetyLimits(LOW, HIGH, np.full(DIM, 0.1), workspace_low=[-0.5, -0.5, 0.0],
                          workspace_high=[0.5, 0.5, 0.5], forward_kinematics=box_fk)
    f = SafetyFilter(limits, period_s=0.02, clock=FakeClock().now)
    prev = f.reset(np.array([0.9, 0, 0.2, 0, 0, 0]))
    assert (f.filter(np.array([1.5, 0, 0.2, 0, 0, 0])) == prev).all()  # outwards: rejected, held
    assert f.counts["reject_workspace"] == 1
    goal = f.filter(np.array([0.0, 0, 0.2, 0, 0, 0]))  # inwards: allowed, one step
    assert goal[0] == pytest.approx(0.8)


@pytest.mark.parametrize("kwargs, match", [
    ({"low": [0, 0], "high": [1, -1], "max_step": 0.1}, "below"),
    ({"low": [0, 0], "high": [1, 1], "max_step": [0.1, 0.1, 0.1]}, "max_step"),
    ({"low": [0, 0], "high": [1, 1], "max_step": 0.0}, "positive"),
    ({"low": [0, np.nan], "high": [1, 1], "max_step": 0.1}, "NaN"),
    ({"low": [0, 0], "high": [1, 1], "max_step": 0.1, "workspace_low": [0, 0, 0], "workspace_high": [1, 1, 1]},
     "kinematics"),
])
def test_bad_limits_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SafetyLimits(**{k: np.asarray(v, dtype=float) if isinstance(v, list) else v for k, v in kwargs.items()})


def test_from_config_defaults_and_errors():
    lim = SafetyLimits.from_config({"max_step": 0.1}, 2, default_low=[-1, -1], default_high=[1, 1])
    assert lim.dim == 2 and (lim.max_step == 0.1).all()
    with pytest.raises(ConfigError, match="'low'"):
        SafetyLimits.from_config({"max_step": 0.1}, 2)
    with pytest.raises(ConfigError, match="3 values"):
        SafetyLimits.from_config({"low": [0, 0, 0], "high": [1, 1, 1], "max_step": 0.1}, 2)


def test_reset_checks_the_measured_state():
    f = SafetyFilter(SafetyLimits(LOW, HIGH, STEP), period_s=0.02)
    with pytest.raises(RuntimeError, match="reset"):
        f.filter(np.zeros(DIM))
    with pytest.raises(ShapeError):
        f.reset(np.zeros(DIM + 1))
    with pytest.raises(ShapeError):
        f.reset(np.full(DIM, np.nan))
