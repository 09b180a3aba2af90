"""End to end without hardware: the MuJoCo-backed arm, the robot client, the policy server
over a real local socket, a scripted takeover in the middle, and the recorded LeRobot
dataset with both values of ``intervention``."""

from __future__ import annotations

import numpy as np
import pytest

from real_robot.control import SystemClock
from real_robot.robots import make_robot
from real_robot.run import deploy_robot
from real_robot.server import PolicyServer
from real_robot.teleop import JointPositionMap, TeleopIntervener, Toggle

STATE = "observation.state"
TARGET = np.array([0.4, -1.3, 1.6, 1.2, 0.6], np.float32)  # joints (rad) and gripper command
MAX_STEP = 0.04


class JointRamp:
    """Deterministic chunk source for the sim arm: from the observed joints towards TARGET."""

    chunk_len, action_dim, state_dim, cameras, name = 6, 5, None, ["observation.images.front"], "ramp"

    def chunk(self, obs):
        q = np.asarray(obs[STATE][:5], np.float32)  # joints (4) and gripper closure (1)
        out = []
        for _ in range(self.chunk_len):
            q = q + np.clip(TARGET - q, -0.02, 0.02)
            out.append(q.copy())
        return np.stack(out)


class WindowToggle(Toggle):
    """A person who takes over on ticks [start, stop) of every episode (counts its own reads)."""

    def __init__(self, start, stop):
        super().__init__()
        self.start, self.stop, self.reads = start, stop, 0

    def set(self, value):  # the intervener resets it at each episode start
        self.reads = 0

    @property
    def active(self):
        self.reads += 1
        return self.start <= self.reads - 1 < self.stop


@pytest.mark.filterwarnings("ignore::UserWarning")  # GLFW probing for a display when rendering
def test_loopback_deploy_with_takeover_records_both_intervention_values(tmp_path, fakes):
    robot_cfg = {"type": "sim", "env": "reach", "fps": 40,
                 "env_kwargs": {"control": "joint", "obs_mode": "both", "image_size": 32, "cameras": ["front"],
                                "max_steps": 500},
                 "limits": {"max_step": MAX_STEP}}
    robot = make_robot(robot_cfg)
    leader_pose = np.array([-0.3, -1.2, 1.5, 1.4, 0.1], np.float32)
    leader = fakes.ScriptedLeader(robot.joint_names, leader_pose)
    intervener = TeleopIntervener(leader, JointPositionMap(robot.joint_names), WindowToggle(12, 24),
                                  hold_goal=robot.hold_goal)
    with PolicyServer(JointRamp(), port=0) as server:
        cfg = {"robot": robot_cfg, "out": str(tmp_path / "real_ds"),
               "deploy": {"server": {"url": server.url, "timeout_s": 2.0}, "episodes": 2, "max_steps": 36,
                          "execute_steps": 3, "listen_keys": False, "seed": 7}}
        results = deploy_robot(cfg, robot=robot, intervener=intervener, clock=SystemClock())
        served = server.served
    assert [r.steps for r in results] == [36, 36] and all(r.interventions == 12 for r in results)
    assert served > 2 * 2  # re-planned during the episodes, not just one chunk each

    from vla.data.chunks import open_lerobot
    from vla.data.writer import read_journal

    ds = open_lerobot(tmp_path / "real_ds")
    assert ds.meta.total_episodes == 2 and ds.meta.total_frames == 72
    journal = read_journal(tmp_path / "real_ds")
    assert [e["source"] for e in journal] == ["policy:ramp", "policy:ramp"]
    assert [e["seed"] for e in journal] == [7, 8]
    table = ds.hf_dataset.with_format("numpy")
    flags = np.asarray(table["intervention"]).reshape(-1).astype(bool)
    assert flags.any() and not flags.all()
    np.testing.assert_array_equal(flags[:36], [False] * 12 + [True] * 12 + [False] * 12)
    actions = np.asarray(table["action"])
    proposals = np.asarray(table["policy_action"])
    low, high = robot.limits
    assert (actions >= low - 1e-6).all() and (actions <= high + 1e-6).all()
    differs = []
    for ep in range(2):
        a = actions[ep * 36:(ep + 1) * 36]
        assert np.abs(np.diff(a, axis=0)).max() <= MAX_STEP + 1e-5  # no jump at takeover or handback
        # during the takeover the arm heads for the leader's pose, step by step
        dist = np.abs(a[11:24] - leader_pose).max(axis=1)
        assert (np.diff(dist) <= 1e-5).all() and dist[-1] < dist[0]
        took = flags[ep * 36:(ep + 1) * 36]
        differs.append(np.abs(proposals[ep * 36:(ep + 1) * 36][took] - a[took]).max())
    assert max(differs) > 0.05  # the policy's proposals (towards TARGET) were kept alongside
    img = ds[0]["observation.images.front"]
    assert tuple(img.shape) == (3, 32, 32)
