"""The human takeover path, driven headless by injected key events."""

import numpy as np
import pytest

import sim
from sim.teleop import KeyEvents, TeleopCommand, TeleopIntervener
from vla.data import EpisodeWriter, open_lerobot, read_journal
from vla.errors import ConfigError
from vla.rollout import run_episode


class Still:
    def __init__(self, env):
        self.env = env

    def reset(self, seed=None):
        pass

    def act(self, obs):
        return self.env.hold_action()


def test_key_events_map_to_commands():
    dev = KeyEvents()
    dev.press("up")
    dev.tap("page_down")
    cmd = dev.poll()
    assert np.allclose(cmd.delta, [1.0, 0.0, -1.0]) and not cmd.toggle  # a tap still counts once
    assert np.allclose(dev.poll().delta, [1.0, 0.0, 0.0])  # "up" is still held
    dev.release("up")
    dev.tap("enter")
    dev.tap("g")
    cmd = dev.poll()
    assert np.allclose(cmd.delta, 0.0) and cmd.toggle and cmd.gripper_toggle
    dev.viewer_key(263)  # GLFW left arrow, from the MuJoCo viewer
    assert np.allclose(dev.poll().delta, [0.0, 1.0, 0.0])


def test_injected_takeover_records_intervention_steps(tmp_path):
    env = sim.make("reach", task="reach the red ball")
    # poll 2: take over; polls 2-6: move +x; poll 9: hand back
    schedule = {2: [("enter", True), ("enter", False), ("up", True)], 7: [("up", False)], 9: [("enter", True)]}
    iv = TeleopIntervener(env, KeyEvents(schedule=schedule), step=0.01)
    writer = EpisodeWriter(tmp_path / "ds", fps=10, obs_spec={"observation.state": (17,)}, action_dim=4,
                           use_videos=False)
    res = run_episode(env, Still(env), intervener=iv, writer=writer, seed=0, max_steps=12, source="policy:still")
    writer.close()
    assert [k for _, k in iv.events] == ["takeover", "handback"]
    assert res.interventions == 7  # polls 2..8
    ds = open_lerobot(tmp_path / "ds")
    flags = [bool(ds[i]["intervention"]) for i in range(len(ds))]
    assert flags == [False, False] + [True] * 7 + [False] * 3
    moved = np.array([ds[i]["action"][0] for i in range(2, 9)])
    assert np.all(np.diff(moved[:5]) > 0.009)  # each held step moves the target 1 cm in +x
    policy = np.array([ds[i]["policy_action"].numpy() for i in range(2, 9)])
    assert not np.allclose(policy[:, 0], moved)  # the policy's own proposals are kept
    assert read_journal(tmp_path / "ds")[0]["interventions"] == 7


def test_takeover_starts_from_the_current_gripper_state():
    env = sim.make("pick_place")
    env.reset(seed=0)
    env.step(env.command_to_action(env.tcp, 1.0))  # close the gripper
    iv = TeleopIntervener(env, KeyEvents(schedule={0: [("enter", True)]}))
    action, took = iv.act({}, np.zeros(4, np.float32))
    assert took and action[3] == pytest.approx(1.0)  # still closed: nothing dropped on takeover


def test_hold_to_intervene_devices():
    class Button:
        def __init__(self):
            self.held = [False, True, True, False]

        def poll(self):
            return TeleopCommand(delta=np.array([0.0, 0.0, 1.0]), gripper=1.0, held=self.held.pop(0))

    env = sim.make("reach")
    env.reset(seed=0)
    iv = TeleopIntervener(env, Button())
    flags = [iv.act({}, np.zeros(4, np.float32))[1] for _ in range(4)]
    assert flags == [False, True, True, False]


def test_teleop_needs_an_arm_task():
    env = sim.make("gym", id="CartPole-v1", task="balance the pole")
    with pytest.raises(ConfigError, match="arm tasks"):
        TeleopIntervener(env, KeyEvents())
