"""On a real SO-101 (deselected by default; run with ``-m hardware``).

    VLA_SO101_PORT=/dev/ttyACM0 VLA_SO101_ID=my_so101_follower pytest -m hardware tests/real_robot

The arm must be calibrated (``lerobot-calibrate``) and free to move a few degrees.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from real_robot.control import ControlLoop
from real_robot.robots import make_robot
from real_robot.run import build_safety

pytestmark = pytest.mark.hardware
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "robot" / "so101.yaml"


@pytest.fixture
def so101():
    port = os.environ.get("VLA_SO101_PORT")
    if not port:
        pytest.skip("set VLA_SO101_PORT (and VLA_SO101_ID) to run on a real SO-101")
    cfg = OmegaConf.load(CONFIG)
    cfg.lerobot.port = port
    cfg.lerobot.id = os.environ.get("VLA_SO101_ID", cfg.lerobot.id)
    cfg.lerobot.cameras = {}
    arm = make_robot(cfg)
    yield cfg, arm
    arm.close()


class Wiggle:
    """Proposes a slow sine around the start pose on the wrist roll, and a NaN now and then."""

    def start_episode(self, obs):
        self.start = np.asarray(obs["observation.state"], np.float32)

    def next_action(self, obs, step):
        if step % 25 == 24:
            return np.full_like(self.start, np.nan)
        goal = self.start.copy()
        goal[4] += 5.0 * np.sin(step / 15)
        return goal

    def close(self):
        pass


def test_so101_follows_filtered_goals_and_holds(so101):
    cfg, arm = so101
    safety = build_safety(cfg, arm)
    loop = ControlLoop(arm, Wiggle(), safety, fps=arm.fps)
    loop.keep_trace = True
    res = loop.run_episode(max_steps=90)
    assert res.steps == 90 and safety.counts["reject_nonfinite"] == 3
    goals = np.stack([t["goal"] for t in loop.trace])
    assert np.abs(np.diff(goals, axis=0)).max() <= safety.limits.max_step.max() + 1e-4
    measured = arm.observe()["observation.state"]
    assert np.abs(measured - goals[-1]).max() < 5.0  # the arm is where it was told (degrees)
