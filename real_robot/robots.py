"""Robots behind the bridge: LeRobot arms (SO-100, SO-101, Koch) and the MuJoCo stand-in.

Both follow the env contract of the design (gymnasium.Env: dict observations with
``observation.state``, ``observation.images.<cam>``, ``task``; joint goals as actions;
``info["is_success"]``) and add the two halves of ``step`` that the control loop uses
separately, so that it observes right at the start of a tick and sends right after
deciding:

    observe() -> obs          read joints and cameras now
    send(goal) -> outcome     write the joint goal; {"reward", "terminated", "truncated", "is_success"}

plus ``obs_spec`` ({key: shape}), ``action_dim``, ``joint_names``, ``task``,
``robot_type`` and ``fps``. ``make_robot(cfg)`` builds one from a ``configs/robot`` entry.
"""

from __future__ import annotations

import logging

import gymnasium as gym
import numpy as np

from real_robot.cfgutil import cfg_get, to_plain
from real_robot.protocol import IMAGE_PREFIX, STATE, TASK
from vla.errors import ConfigError, ShapeError

log = logging.getLogger(__name__)

LEROBOT_ARMS = ("so101_follower", "so100_follower", "koch_follower")


def _obs_space(obs_spec: dict[str, tuple]) -> gym.spaces.Dict:
    spaces = {}
    for key, shape in obs_spec.items():
        if key.startswith(IMAGE_PREFIX):
            spaces[key] = gym.spaces.Box(0, 255, shape, np.uint8)
        else:
            spaces[key] = gym.spaces.Box(-np.inf, np.inf, shape, np.float32)
    spaces[TASK] = gym.spaces.Text(1000)
    return gym.spaces.Dict(spaces)


class LeRobotArm(gym.Env):
    """A LeRobot ``Robot`` (connected lazily on the first reset) in the env contract.

    The state is the motors' ``<name>.pos`` values in the robot's own order (degrees for
    the arm joints with ``use_degrees``, 0..100 for a gripper); the action is the same
    vector as joint goals. Cameras ``<cam>`` become ``observation.images.<cam>``.
    """

    metadata = {"render_modes": []}

    def __init__(self, robot, task: str, fps: float, low=None, high=None):
        self.robot = robot
        self.task = str(task)
        self.fps = float(fps)
        self.robot_type = getattr(robot, "name", "lerobot")
        self.joint_names = [k.removesuffix(".pos") for k in robot.action_features if k.endswith(".pos")]
        if len(self.joint_names) != len(robot.action_features):
            raise ConfigError(f"robot {self.robot_type}: only joint-position actions are supported, "
                              f"got {list(robot.action_features)}")
        self.action_dim = len(self.joint_names)
        self.cameras = [k for k, v in robot.observation_features.items() if isinstance(v, tuple)]
        self.obs_spec = {STATE: (self.action_dim,)}
        for cam in self.cameras:
            self.obs_spec[IMAGE_PREFIX + cam] = tuple(robot.observation_features[cam])
        self.observation_space = _obs_space(self.obs_spec)
        low = np.full(self.action_dim, -np.inf) if low is None else np.asarray(low, np.float32)
        high = np.full(self.action_dim, np.inf) if high is None else np.asarray(high, np.float32)
        self.action_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32))

    forward_kinematics = None  # give one (joints -> xyz) to enable the safety workspace box

    def hold_goal(self, obs: dict) -> np.ndarray:
        """The goal that keeps the arm where it is: its measured joints."""
        return np.asarray(obs[STATE], dtype=np.float32).copy()

    def connect(self, calibrate: bool = True) -> None:
        if not self.robot.is_connected:
            self.robot.connect(calibrate=calibrate)

    def observe(self) -> dict:
        raw = self.robot.get_observation()
        obs = {STATE: np.array([raw[f"{m}.pos"] for m in self.joint_names], dtype=np.float32), TASK: self.task}
        for cam in self.cameras:
            img = np.asarray(raw[cam], dtype=np.uint8)
            if img.shape != self.obs_spec[IMAGE_PREFIX + cam]:
                raise ShapeError(f"camera {cam}: frame {img.shape}, configured {self.obs_spec[IMAGE_PREFIX + cam]}")
            obs[IMAGE_PREFIX + cam] = img
        return obs

    def send(self, goal) -> dict:
        goal = np.asarray(goal, dtype=np.float32).reshape(-1)
        if goal.shape != (self.action_dim,):
            raise ShapeError(f"joint goal {goal.shape}, robot {self.robot_type} has {self.action_dim} joints")
        self.robot.send_action({f"{m}.pos": float(g) for m, g in zip(self.joint_names, goal, strict=True)})
        # success on a real arm is the operator's call (keys / gamepad), not the env's
        return {"reward": 0.0, "terminated": False, "truncated": False, "is_success": False}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.connect()
        return self.observe(), {"is_success": False}

    def step(self, action):
        out = self.send(action)
        return self.observe(), out["reward"], out["terminated"], out["truncated"], {"is_success": out["is_success"]}

    def close(self) -> None:
        if self.robot.is_connected:
            self.robot.disconnect()


class SimArm(gym.Wrapper):
    """A MuJoCo env from ``sim.make`` behind the same bridge: the stand-in for a real arm.

    Each ``send`` advances the simulation by one control step, so tests run as fast
    as the physics; its joint limits are the env's action space.
    """

    def __init__(self, env: gym.Env, fps: float | None = None):
        super().__init__(env)
        space = env.observation_space
        self.obs_spec = {k: tuple(s.shape) for k, s in space.spaces.items() if k != TASK}
        if STATE not in self.obs_spec:
            raise ShapeError(f"sim env {env}: observation lacks {STATE}")
        self.action_dim = int(np.prod(env.action_space.shape))
        self.joint_names = [f"joint_{i}" for i in range(self.action_dim)]
        self.robot_type = "sim"
        self.fps = float(fps or env.metadata.get("render_fps") or 20)
        self._obs: dict | None = None

    @property
    def task(self) -> str:
        return str(getattr(self.env.unwrapped, "task", None) or getattr(self.env, "task", ""))

    @property
    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.env.action_space.low), np.asarray(self.env.action_space.high)

    def hold_goal(self, obs: dict) -> np.ndarray:
        """The goal (in the action space) that keeps the arm where it is now."""
        return np.asarray(self.env.unwrapped.hold_action(), dtype=np.float32)

    @property
    def forward_kinematics(self):
        """Action -> TCP xyz, for the safety filter's workspace box."""
        if getattr(self.env.unwrapped, "control", "joint") == "ee":
            return lambda a: np.asarray(a[:3], dtype=np.float64)
        from sim.arm import fk

        return lambda a: fk(np.asarray(a[:4], dtype=np.float64))

    def connect(self, calibrate: bool = True) -> None:
        pass

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = obs
        return obs, info

    def observe(self) -> dict:
        if self._obs is None:
            raise RuntimeError("SimArm.observe() before reset()")
        return self._obs

    def send(self, goal) -> dict:
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(goal, dtype=np.float32))
        self._obs = obs
        return {"reward": float(reward), "terminated": bool(terminated), "truncated": bool(truncated),
                "is_success": bool(info.get("is_success", False))}

    def step(self, action):
        out = self.send(action)
        return self._obs, out["reward"], out["terminated"], out["truncated"], {"is_success": out["is_success"]}


def sim_make(name: str, **kwargs) -> gym.Env:
    """``sim.make`` (the task registry of sim/)."""
    try:
        from sim import make
    except ImportError:  # older layout: the registry module only
        from sim.registry import make
    return make(name, **kwargs)


def make_lerobot_robot(lerobot_cfg: dict):
    """A LeRobot ``Robot`` from its own config map ({type: so101_follower, port: ..., cameras: ...})."""
    import draccus
    import lerobot.cameras.opencv  # noqa: F401  (registers the 'opencv' camera type)
    import lerobot.robots.koch_follower  # noqa: F401  (registers the arm types)
    import lerobot.robots.so_follower  # noqa: F401
    from lerobot.robots import RobotConfig, make_robot_from_config

    lerobot_cfg = dict(to_plain(lerobot_cfg))
    if lerobot_cfg.get("type") not in LEROBOT_ARMS:
        raise ConfigError(f"robot config: lerobot.type must be one of {LEROBOT_ARMS}, got {lerobot_cfg.get('type')!r}")
    try:
        config = draccus.decode(RobotConfig, lerobot_cfg)
    except Exception as e:  # draccus reports unknown or missing fields with several types
        raise ConfigError(f"robot config 'lerobot' section: {e}") from None
    return make_robot_from_config(config)


def urdf_forward_kinematics(kin_cfg, joint_names: list[str]):
    """joints (degrees) -> end-effector xyz (m), with LeRobot's placo-based kinematics and a URDF
    (``kinematics: {urdf: ..., frame: gripper_frame_link}``); enables the workspace box."""
    from lerobot.model.kinematics import RobotKinematics

    urdf = cfg_get(kin_cfg, "urdf")
    if not urdf:
        raise ConfigError("robot config: kinematics needs 'urdf' (the arm's URDF file)")
    arm_joints = list(to_plain(cfg_get(kin_cfg, "joints")) or [j for j in joint_names if j != "gripper"])
    kin = RobotKinematics(str(urdf), target_frame_name=str(cfg_get(kin_cfg, "frame", "gripper_frame_link")),
                          joint_names=arm_joints)
    index = [joint_names.index(j) for j in arm_joints]
    return lambda q: np.asarray(kin.forward_kinematics(np.asarray(q, np.float64)[index]))[:3, 3]


def make_robot(cfg):
    """Build the robot named by a ``configs/robot`` entry (``type: lerobot`` or ``type: sim``)."""
    kind = cfg_get(cfg, "type")
    task = cfg_get(cfg, "task")
    if kind == "sim":
        name = cfg_get(cfg, "env")
        if not name:
            raise ConfigError("robot config (type sim): set 'env' to a sim task name")
        kwargs = dict(to_plain(cfg_get(cfg, "env_kwargs", {}) or {}))
        env = SimArm(sim_make(name, **kwargs), fps=cfg_get(cfg, "fps"))
        if task:
            env.unwrapped.task = str(task)
        return env
    if kind == "lerobot":
        if not task:
            raise ConfigError("robot config: set 'task' to the instruction the policy gets")
        fps = cfg_get(cfg, "fps")
        if not fps:
            raise ConfigError("robot config: set 'fps', the control rate")
        limits = cfg_get(cfg, "limits") or {}
        robot = make_lerobot_robot(cfg_get(cfg, "lerobot"))
        arm = LeRobotArm(robot, task=task, fps=fps, low=cfg_get(limits, "low"), high=cfg_get(limits, "high"))
        kin = cfg_get(cfg, "kinematics")
        if kin:
            arm.forward_kinematics = urdf_forward_kinematics(kin, arm.joint_names)
        return arm
    raise ConfigError(f"robot config: type must be 'lerobot' or 'sim', got {kind!r}")
