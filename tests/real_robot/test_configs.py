"""The shipped robot and deploy configs build what they describe (no hardware is opened),
and the robot client stays light: importing it pulls in neither torch nor LeRobot."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from real_robot.robots import LeRobotArm, SimArm, make_robot
from real_robot.run import build_safety
from vla.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ARMS = ["so101", "so100", "koch"]


@pytest.mark.parametrize("name", ARMS)
def test_arm_configs_build_a_lerobot_arm_with_its_limits(name, tmp_path):
    cfg = OmegaConf.load(CONFIGS / "robot" / f"{name}.yaml")
    sdk = "dynamixel_sdk" if name == "koch" else "scservo_sdk"
    if importlib.util.find_spec(sdk) is None:
        pytest.skip(f"{sdk} not installed (extra 'robot')")
    cfg.lerobot.calibration_dir = str(tmp_path)  # keep LeRobot from writing under ~/.cache
    arm = make_robot(cfg)
    assert isinstance(arm, LeRobotArm) and not arm.robot.is_connected
    assert arm.joint_names == ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    assert arm.obs_spec == {"observation.state": (6,), "observation.images.front": (480, 640, 3)}
    safety = build_safety(cfg, arm)
    assert safety.limits.dim == 6 and (safety.limits.high > safety.limits.low).all()
    assert cfg.teleop.lerobot.type.endswith("_leader")


def test_sim_config_builds_the_mujoco_stand_in():
    cfg = OmegaConf.load(CONFIGS / "robot" / "sim.yaml")
    arm = make_robot(cfg)
    try:
        assert isinstance(arm, SimArm) and arm.action_dim == 5
        safety = build_safety(cfg, arm)
        low, high = arm.limits
        np.testing.assert_allclose(safety.limits.low, low)
        np.testing.assert_allclose(safety.limits.high, high)
    finally:
        arm.close()


def test_deploy_config_reads_the_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("VLA_SERVER_TOKEN", "from-env")
    cfg = OmegaConf.load(CONFIGS / "deploy" / "robot.yaml")
    assert cfg.server.token == "from-env" and cfg.server.host == "127.0.0.1"
    monkeypatch.delenv("VLA_SERVER_TOKEN")
    assert OmegaConf.load(CONFIGS / "deploy" / "robot.yaml").server.token == ""


def test_bad_robot_configs_are_one_line_errors():
    with pytest.raises(ConfigError, match="type must be"):
        make_robot({"type": "ur5"})
    with pytest.raises(ConfigError, match="task"):
        make_robot({"type": "lerobot", "fps": 30, "lerobot": {"type": "so101_follower", "port": "/dev/x"}})
    with pytest.raises(ConfigError, match="lerobot.type"):
        make_robot({"type": "lerobot", "task": "t", "fps": 30, "lerobot": {"type": "ur5"}})
    with pytest.raises(ConfigError, match="'lerobot' section"):
        make_robot({"type": "lerobot", "task": "t", "fps": 30, "lerobot": {"type": "so101_follower", "prot": "x"}})


def test_robot_client_is_light():
    code = ("import sys, real_robot.client, real_robot.control, real_robot.safety, real_robot.guards\n"
            "heavy = sorted(m for m in ('torch', 'lerobot', 'gymnasium', 'mujoco', 'cv2') if m in sys.modules)\n"
            "print(','.join(heavy))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the client imports {out.stdout.strip()}"


def test_urdf_kinematics_feed_the_workspace_box(monkeypatch, tmp_path):
    """A ``kinematics`` section wires LeRobot's RobotKinematics (placo) into the safety filter."""
    import lerobot.model.kinematics as kinematics

    class FakeKinematics:  # placo is optional; this stands in with a known pose
        def __init__(self, urdf, target_frame_name, joint_names):
            self.joint_names = joint_names

        def forward_kinematics(self, q_deg):
            pose = np.eye(4)
            pose[:3, 3] = np.asarray(q_deg[:3]) / 100.0
            return pose

    monkeypatch.setattr(kinematics, "RobotKinematics", FakeKinematics)
    cfg = OmegaConf.load(CONFIGS / "robot" / "so101.yaml")
    cfg.lerobot.calibration_dir = str(tmp_path)
    cfg.kinematics = {"urdf": "so101.urdf"}
    cfg.limits.workspace_low = [-0.2, -0.2, -0.2]
    cfg.limits.workspace_high = [0.2, 0.2, 0.2]
    arm = make_robot(cfg)
    safety = build_safety(cfg, arm)
    np.testing.assert_allclose(arm.forward_kinematics(np.array([10, 20, 30, 0, 0, 50.0])), [0.1, 0.2, 0.3])
    safety.reset(np.array([0, 0, 18, 0, 0, 50.0]))
    goal = safety.filter(np.array([0, 0, 25, 0, 0, 50.0]))  # z would leave the box at 0.2
    assert goal[2] <= 20 + 1e-3 and safety.counts["clip_workspace"] == 1
