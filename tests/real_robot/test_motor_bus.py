"""The motor level: an SO-101 follower through LeRobot's own driver and Feetech SDK, on a mocked
serial port that answers like a chain of STS3215 servos. The goals written to the bus must be
the safety-filtered ones, whatever the policy proposed."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("scservo_sdk", reason="Feetech SDK (feetech-servo-sdk) not installed")
serial = pytest.importorskip("serial", reason="pyserial not installed")

from lerobot.motors.feetech import FeetechMotorsBus  # noqa: E402
from lerobot.motors.motors_bus import get_address  # noqa: E402

from real_robot.control import ControlLoop, FakeClock  # noqa: E402
from real_robot.robots import LeRobotArm, make_lerobot_robot  # noqa: E402
from real_robot.run import record  # noqa: E402
from real_robot.safety import SafetyFilter, SafetyLimits  # noqa: E402
from real_robot.teleop import make_teleop  # noqa: E402

IDS = [1, 2, 3, 4, 5, 6]
MODEL_NUMBER = 777  # STS3215
RANGE = (1000, 3000)  # calibrated encoder range of every joint in this test
TICK_DEG = 360 / 4095


def addr(name):
    return get_address(FeetechMotorsBus.model_ctrl_table, "sts3215", name)


class FakeServoPort:
    """A pyserial stand-in: parses Feetech (SCS protocol 0) instruction packets and answers
    with status packets from a per-servo register table, as real servos would."""

    def __init__(self, start_raw: int = 2000):
        self.mem = {i: bytearray(256) for i in IDS}
        for i in IDS:
            self._put(i, *addr("Model_Number"), MODEL_NUMBER)
            self._put(i, *addr("Min_Position_Limit"), RANGE[0])
            self._put(i, *addr("Max_Position_Limit"), RANGE[1])
            self._put(i, *addr("Present_Position"), start_raw)
        self.out = bytearray()  # bytes for the host to read
        self.goal_writes: list[dict[int, int]] = []
        self.is_open = True

    def _put(self, sid, a, n, value):
        self.mem[sid][a:a + n] = int(value).to_bytes(n, "little")

    def _get(self, sid, a, n):
        return int.from_bytes(self.mem[sid][a:a + n], "little")

    def _status(self, sid, params=b""):
        body = [sid, len(params) + 2, 0, *params]
        self.out += bytes([0xFF, 0xFF, *body, ~sum(body) & 0xFF])

    # -- pyserial interface used by scservo_sdk.PortHandler --------------------------
    def write(self, data) -> int:
        pkt = bytes(data)
        assert pkt[:2] == b"\xff\xff", "bad header"
        sid, length, inst = pkt[2], pkt[3], pkt[4]
        params = pkt[5:5 + length - 2]  # LEN counts the instruction and the checksum too
        assert pkt[3 + length] == ~sum(pkt[2:3 + length]) & 0xFF, "bad checksum"
        if inst == 0x01:  # ping
            if sid in self.mem:
                self._status(sid)
        elif inst == 0x02:  # read
            a, n = params
            self._status(sid, bytes(self.mem[sid][a:a + n]))
        elif inst == 0x03:  # write
            a, data_ = params[0], params[1:]
            self.mem[sid][a:a + len(data_)] = data_
            self._status(sid)
        elif inst == 0x82:  # sync read
            a, n, ids = params[0], params[1], params[2:]
            for i in ids:
                self._status(i, bytes(self.mem[i][a:a + n]))
        elif inst == 0x83:  # sync write (no reply)
            a, n = params[0], params[1]
            written = {}
            for k in range(2, len(params), n + 1):
                i, data_ = params[k], params[k + 1:k + 1 + n]
                self.mem[i][a:a + n] = data_
                written[i] = int.from_bytes(data_, "little")
            if (a, n) == addr("Goal_Position"):
                self.goal_writes.append(written)
                for i, raw in written.items():  # the servo gets there by the next read
                    self._put(i, *addr("Present_Position"), raw)
        else:
            raise AssertionError(f"unexpected instruction {inst:#x}")
        return len(pkt)

    def read(self, n: int) -> bytes:
        chunk, self.out = bytes(self.out[:n]), self.out[n:]
        return chunk

    @property
    def in_waiting(self) -> int:
        return len(self.out)

    def reset_input_buffer(self):
        self.out.clear()

    def flush(self):
        pass

    def close(self):
        self.is_open = False


NAMES = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


@pytest.fixture
def ports(tmp_path, monkeypatch):
    """Fake serial ports by name, and a calibration file (id 'arm') matching their registers."""
    table = {"/dev/follower": FakeServoPort(), "/dev/leader": FakeServoPort(start_raw=2300)}
    monkeypatch.setattr(serial, "Serial", lambda *a, port=None, **k: table[port])
    calib = {n: {"id": i, "drive_mode": 0, "homing_offset": 0, "range_min": RANGE[0], "range_max": RANGE[1]}
             for n, i in zip(NAMES, IDS, strict=True)}
    (tmp_path / "arm.json").write_text(json.dumps(calib))
    return table, tmp_path


@pytest.fixture
def so101(ports):
    table, calib_dir = ports
    robot = make_lerobot_robot({"type": "so101_follower", "port": "/dev/follower", "id": "arm",
                                "calibration_dir": str(calib_dir), "use_degrees": True})
    return robot, table["/dev/follower"]


def to_units(raw: dict[int, int]) -> np.ndarray:
    """Raw ticks -> LeRobot units: degrees around the range middle, gripper 0..100."""
    mid = sum(RANGE) / 2
    out = [(raw[i] - mid) * TICK_DEG for i in IDS[:5]]
    out.append((raw[6] - RANGE[0]) / (RANGE[1] - RANGE[0]) * 100)
    return np.array(out)


class Wild:
    """Proposes jumps, NaNs and wrong shapes."""

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def start_episode(self, obs):
        pass

    def next_action(self, obs, step):
        kind = step % 4
        if kind == 0:
            return self.rng.uniform(-200, 200, 6)
        if kind == 1:
            return np.full(6, np.nan)
        if kind == 2:
            return np.zeros(7)
        return obs["observation.state"] + self.rng.uniform(-3, 3, 6)

    def close(self):
        pass


def test_goals_on_the_bus_are_the_filtered_ones(so101):
    robot, port = so101
    low = np.array([-30, -30, -30, -30, -30, 10.0])
    high = np.array([30, 30, 30, 30, 30, 90.0])
    step = np.array([2, 2, 2, 2, 2, 5.0])
    arm = LeRobotArm(robot, task="pick", fps=30, low=low, high=high)
    safety = SafetyFilter(SafetyLimits(low, high, step), period_s=1 / 30)
    loop = ControlLoop(arm, Wild(), safety, fps=30, clock=FakeClock())
    loop.keep_trace = True
    try:
        loop.run_episode(max_steps=40)
        assert robot.is_connected and robot.is_calibrated
    finally:
        arm.close()
    assert len(port.goal_writes) == 40
    goals = np.stack([t["goal"] for t in loop.trace])
    on_bus = np.stack([to_units(w) for w in port.goal_writes])
    # what reached the motors is what the filter let through (to one encoder tick)
    np.testing.assert_allclose(on_bus, goals, atol=TICK_DEG * 1.01)
    start = to_units({i: 2000 for i in IDS})
    assert (np.abs(np.diff(np.vstack([start, on_bus]), axis=0)) <= step + TICK_DEG * 1.01).all()
    inside = (on_bus[-20:] >= low - TICK_DEG) & (on_bus[-20:] <= high + TICK_DEG)
    assert inside.all()  # after walking in from the start pose, the goals stay inside
    assert safety.counts["reject_nonfinite"] == 10 and safety.counts["reject_shape"] == 10
    assert not port.is_open  # disconnect closed the port (torque disabled first)
    torque = addr("Torque_Enable")
    assert all(port._get(i, *torque) == 0 for i in IDS)


def test_record_a_demo_with_a_leader_arm(ports, fakes):
    """Record mode on mocked hardware: the SO-101 leader's pose drives the follower, which
    walks there at the step limit; the episode is a demo without interventions."""
    table, calib_dir = ports
    follower = make_lerobot_robot({"type": "so101_follower", "port": "/dev/follower", "id": "arm",
                                   "calibration_dir": str(calib_dir), "use_degrees": True})
    leader = make_teleop({"type": "so101_leader", "port": "/dev/leader", "id": "arm",
                          "calibration_dir": str(calib_dir)})
    step = 4.0
    cfg = {"robot": {"limits": {"low": [-90] * 5 + [0], "high": [90] * 5 + [100], "max_step": step},
                     "teleop": {"lerobot": {"type": "so101_leader"}}},
           "deploy": {"episodes": 1, "max_steps": 15, "listen_keys": False}}
    rec = fakes.MemoryRecorder()
    arm = LeRobotArm(follower, task="fold the cloth", fps=30)
    record(cfg, robot=arm, teleop=leader, recorder=rec, clock=FakeClock())
    source, steps = rec.episodes[0]
    assert source == "demo" and len(steps) == 15 and not any(s["intervention"] for s in steps)
    leader_pose = to_units({i: 2300 for i in IDS})
    actions = np.stack([s["action"] for s in steps])
    np.testing.assert_allclose(actions[-1], leader_pose, atol=TICK_DEG * 1.01)  # arrived
    assert np.abs(np.diff(actions, axis=0)).max() <= step + 1e-4  # never faster than the limit
    on_bus = np.stack([to_units(w) for w in table["/dev/follower"].goal_writes])
    np.testing.assert_allclose(on_bus, actions, atol=TICK_DEG * 1.01)
    assert not table["/dev/follower"].is_open and not leader.is_connected  # both released at the end
