"""Takeover pieces: the toggle, leader-arm and jog mappings, the intervener and record mode's source."""

from __future__ import annotations

import numpy as np
import pytest

from real_robot.guards import KeyBindings
from real_robot.teleop import (
    JogMap,
    JointPositionMap,
    TeleopEventToggle,
    TeleopIntervener,
    TeleopSource,
    Toggle,
    make_mapping,
    make_teleop,
)
from vla.errors import ConfigError

STATE = "observation.state"


def test_toggle_by_key_hands_control_back_and_forth(fakes):
    toggle = Toggle()
    keys = KeyBindings({"space": toggle.flip})
    leader = fakes.ScriptedLeader(["a", "b"], [0.5, -0.5])
    iv = TeleopIntervener(leader, JointPositionMap(["a", "b"]), toggle)
    obs = {STATE: np.zeros(2, np.float32)}
    proposed = np.array([0.1, 0.1], np.float32)
    assert iv.act(obs, proposed)[1] is False and leader.reads == 0  # the teleop is not even read
    keys.press("space")
    action, took = iv.act(obs, proposed)
    assert took and np.allclose(action, [0.5, -0.5]) and iv.takeovers == 1
    keys.press("SPACE")
    assert iv.act(obs, proposed) == (proposed, False)
    keys.press("space")
    iv.reset()  # a new episode starts with the policy in control
    assert not toggle.active and iv.act(obs, proposed)[1] is False


def test_joint_position_map_names_missing_joints():
    with pytest.raises(ConfigError, match="elbow"):
        JointPositionMap(["shoulder", "elbow"])({"shoulder.pos": 1.0})


def test_jog_from_the_current_pose_with_keys_and_gamepad_axes():
    jog = JogMap(3, {"q": (0, 0.1), "a": (0, -0.1), "delta_x": (1, 0.5), "gripper": (2, 2.0)})
    jog.start(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(jog({"q": None}), [1.1, 2.0, 3.0])  # a held key
    np.testing.assert_allclose(jog({"q": None, "z": None}), [1.2, 2.0, 3.0])  # unbound keys ignored
    np.testing.assert_allclose(jog({"delta_x": -1.0, "gripper": 2}), [1.2, 1.5, 5.0])  # open: +1
    np.testing.assert_allclose(jog({"gripper": 1}), [1.2, 1.5, 5.0])  # stay
    with pytest.raises(ConfigError, match="outside"):
        JogMap(3, {"q": (3, 0.1)})


def test_takeover_jogs_from_where_the_arm_is():
    toggle = Toggle(True)

    class Keyboard:
        def get_action(self):
            return {"w": None}

    iv = TeleopIntervener(Keyboard(), JogMap(2, {"w": (1, 0.25)}), toggle,
                          hold_goal=lambda obs: obs[STATE][:2])
    action, took = iv.act({STATE: np.array([0.5, 0.5, 9.0])}, np.zeros(2))
    assert took and np.allclose(action, [0.5, 0.75])


def test_gamepad_button_toggle():
    from lerobot.teleoperators.utils import TeleopEvents

    class Pad:
        pressed = False

        def get_teleop_events(self):
            return {TeleopEvents.IS_INTERVENTION: self.pressed}

    pad = Pad()
    toggle = TeleopEventToggle(pad)
    assert not toggle.active
    pad.pressed = True
    assert toggle.active


def test_teleop_source_for_demos(fakes):
    leader = fakes.ScriptedLeader(["a"], [0.7])
    src = TeleopSource(leader, make_mapping("so101_leader", ["a"]))
    src.start_episode({STATE: np.zeros(1)})
    assert np.allclose(src.next_action({}, 0), [0.7])


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="jog"):
        make_mapping("keyboard", ["a"], None)
    with pytest.raises(ConfigError, match="teleop type"):
        make_mapping("joystick", ["a"])
    with pytest.raises(ConfigError, match="teleop type must be one of"):
        make_teleop({"type": "phone"})
    with pytest.raises(ConfigError, match="teleop.lerobot"):
        make_teleop({"type": "so101_leader", "portt": "/dev/x"})
