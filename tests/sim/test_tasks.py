"""Every registered task: spaces, determinism, success detectors, bad input."""

import gymnasium as gym
import numpy as np
import pytest

import sim
from sim.arm import fk, ik
from vla.errors import ConfigError, DataError, ShapeError
from vla.types import STATE, TASK

TASKS = sim.task_names()


def test_four_tasks_registered_in_order_of_difficulty():
    assert TASKS == ["reach", "push", "pick_place", "stack"]
    for name, gym_id in sim.GYM_IDS.items():
        env = gym.make(gym_id)
        obs, _ = env.reset(seed=0)
        assert obs[TASK] in sim.TASKS[name].instructions


@pytest.mark.parametrize("name", TASKS)
def test_reset_and_step_give_declared_keys_and_shapes(name):
    env = sim.make(name)
    obs, info = env.reset(seed=3)
    assert set(obs) == {STATE, TASK}
    assert obs[STATE].shape == env.observation_space[STATE].shape == (17,)
    assert obs[STATE].dtype == np.float32
    assert obs[TASK] in env.instructions and info["is_success"] is False
    assert env.action_space.shape == (4,)
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert np.isfinite(obs[STATE]).all()
        assert isinstance(reward, float) and {"is_success", "progress"} <= set(info)


@pytest.mark.parametrize("name", TASKS)
def test_cameras_in_pixels_and_both_modes(name):
    env = sim.make(name, obs_mode="both", image_size=(24, 32))
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(env.hold_action())
    for cam in ("front", "wrist"):
        img = obs[f"observation.images.{cam}"]
        assert img.shape == (24, 32, 3) and img.dtype == np.uint8
        assert img.std() > 5  # a scene, not a blank frame
    pixels = sim.make(name, obs_mode="pixels", image_size=16, cameras=["wrist"])
    obs, _ = pixels.reset(seed=0)
    assert set(obs) == {STATE, "observation.images.wrist", TASK}
    assert obs[STATE].shape == (8,)  # proprioception only: objects must be seen


@pytest.mark.parametrize("name", TASKS)
def test_same_seed_same_episode(name):
    def run(seed):
        env = sim.make(name)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        states = [obs[STATE]]
        for _ in range(10):
            a = env.action_space.low + rng.random(4) * (env.action_space.high - env.action_space.low)
            obs, *_ = env.step(a)
            states.append(obs[STATE])
        return obs[TASK], np.stack(states)

    task_a, a = run(7)
    task_b, b = run(7)
    _, c = run(8)
    assert task_a == task_b and np.array_equal(a, b)
    assert not np.allclose(a[0], c[0])  # another seed, another scene


@pytest.mark.parametrize("name", TASKS)
def test_snapshot_restore_replays_the_same_future(name):
    env = sim.make(name).unwrapped
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    actions = env.action_space.low + rng.random((12, 4)) * (env.action_space.high - env.action_space.low)
    for a in actions[:4]:
        env.step(a)
    snap = env.snapshot()
    first = [env.step(a) for a in actions[4:]]
    obs = env.restore(snap)
    assert env.steps == 4 and obs[TASK] == first[0][0][TASK]
    again = [env.step(a) for a in actions[4:]]
    for (o1, r1, *_), (o2, r2, *_) in zip(first, again, strict=True):
        assert np.array_equal(o1[STATE], o2[STATE]) and r1 == r2


@pytest.mark.parametrize("name", TASKS)
def test_instruction_override_and_unknown_instruction(name):
    cls = sim.TASKS[name]
    chosen = cls.instructions[-1]
    env = sim.make(name, task=chosen)
    for seed in range(3):
        assert env.reset(seed=seed)[0][TASK] == chosen
    with pytest.raises(ConfigError, match="unknown instruction .* known: .*" + cls.instructions[0]):
        sim.make(name, task="dance on the table")


def test_instructions_vary_with_the_seed():
    env = sim.make("stack")
    seen = {env.reset(seed=s)[0][TASK] for s in range(40)}
    assert len(seen) == len(sim.TASKS["stack"].instructions) == 6


def test_unknown_task_and_option_list_the_known_ones():
    with pytest.raises(ConfigError, match="unknown task 'fly'.*reach, push, pick_place, stack"):
        sim.make("fly")
    with pytest.raises(ConfigError, match="unknown option.*'colour'.*obs_mode"):
        sim.make("reach", colour="red")
    with pytest.raises(ConfigError, match="obs_mode"):
        sim.make("reach", obs_mode="depth")


def test_bad_actions_are_rejected():
    env = sim.make("reach")
    env.reset(seed=0)
    with pytest.raises(ShapeError, match=r"shape \(3,\), expected \(4,\)"):
        env.step(np.zeros(3))
    with pytest.raises(DataError, match="NaN"):
        env.step(np.array([0.3, 0.0, np.nan, 0.0]))
    joint = sim.make("reach", control="joint")
    joint.reset(seed=0)
    with pytest.raises(ShapeError, match="yaw, shoulder, elbow, wrist, gripper"):
        joint.step(np.zeros(4))


def test_ik_is_exact_and_joint_control_reaches_the_same_point():
    rng = np.random.default_rng(0)
    for _ in range(20):  # points inside the arm's reach
        p = np.array([rng.uniform(0.12, 0.38), rng.uniform(-0.25, 0.25), rng.uniform(0.02, 0.25)])
        assert np.allclose(fk(ik(p)), p, atol=1e-9)
    far = np.array([0.5, 0.38, 0.35])  # out of reach: same bearing, on the reachable shell
    reached = fk(ik(far))
    assert np.isclose(np.arctan2(reached[1], reached[0]), np.arctan2(far[1], far[0]))
    target = np.array([0.3, 0.1, 0.1])
    ee, joint = sim.make("reach"), sim.make("reach", control="joint")
    for env in (ee, joint):
        env.reset(seed=0)
        for _ in range(5):
            env.step(env.unwrapped.command_to_action(target, 0.0))
        assert np.linalg.norm(env.tcp - target) < 2e-3


def test_reach_success_on_hand_placed_states():
    env = sim.make("reach", task="reach the green ball")
    env.reset(seed=0)
    green, red = env.body_pos("green"), env.body_pos("red")
    assert not env.is_success()
    for target, expected in ((green, True), (red, False), (green + [0.0, 0.0, 0.05], False)):
        for _ in range(5):
            env.step(env.command_to_action(target, 0.0))
        assert env.is_success() is expected


def test_push_success_on_hand_placed_states():
    env = sim.make("push", task="push the block to the blue zone")
    env.reset(seed=0)
    blue, red = env.body_pos("blue_zone"), env.body_pos("red_zone")
    env.set_body("block", [*red[:2], 0.02])
    assert not env.is_success()
    env.set_body("block", [*(blue[:2] + [0.01, -0.01]), 0.02])
    assert env.is_success()
    env.set_body("block", [*(blue[:2] + [0.04, 0.0]), 0.02])
    assert not env.is_success()


def test_pick_place_success_on_hand_placed_states():
    env = sim.make("pick_place", task="put the red cube in the bin")
    env.reset(seed=0)
    b = env.body_pos("bin")
    env.set_body("blue", [b[0], b[1], 0.02])  # the distractor in the bin does not count
    assert not env.is_success()
    env.set_body("blue", [0.15, 0.3, 0.02])
    env.set_body("red", [b[0] + 0.02, b[1] - 0.02, 0.02])
    assert env.is_success()
    env.set_body("red", [b[0], b[1], 0.09])  # above the bin, still held up
    assert not env.is_success()
    env.set_body("red", [b[0] + 0.09, b[1], 0.02])  # beside the bin
    assert not env.is_success()


def test_stack_success_on_hand_placed_states():
    env = sim.make("stack", task="stack the red cube on the blue cube")
    env.reset(seed=0)
    blue = env.body_pos("blue")
    env.set_body("red", blue + [0.005, 0.0, 0.04])
    assert env.is_success()
    env.set_body("red", blue + [0.03, 0.0, 0.04])  # off centre
    assert not env.is_success()
    green = env.body_pos("green")
    env.set_body("red", green + [0.0, 0.0, 0.04])  # on the wrong cube
    assert not env.is_success()
    env.set_body("blue", env.body_pos("red") + [0.0, 0.0, 0.04])  # upside down: blue on red
    assert not env.is_success()


@pytest.mark.parametrize("name", TASKS)
def test_rewards_sparse_and_dense(name):
    sparse, dense = sim.make(name), sim.make(name, reward="dense")
    sparse.reset(seed=1)
    dense.reset(seed=1)
    a = sparse.unwrapped.hold_action()
    _, r_sparse, *_ = sparse.step(a)
    _, r_dense, _, _, info = dense.step(a)
    assert r_sparse == 0.0
    assert r_dense == pytest.approx(info["progress"]) and 0.0 <= r_dense < 1.0


def test_truncates_at_max_steps():
    env = sim.make("reach", max_steps=3)
    env.reset(seed=0)
    hold = env.hold_action()
    flags = [env.step(hold)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
