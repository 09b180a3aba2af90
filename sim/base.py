"""The base of every MuJoCo task: an arm on a table, a language instruction, cameras.

Observation (one step, numpy; keys as in DESIGN.md)::

    "observation.state"          float32 (Ds,)  joints (4), gripper closure (1, 0 open .. 1 closed),
                                                TCP position (3); then, in obs_mode "state" or
                                                "both", the task's object features (see each task)
    "observation.images.front"   uint8 (H, W, 3) fixed camera facing the arm   (obs_mode "pixels"/"both")
    "observation.images.wrist"   uint8 (H, W, 3) camera on the gripper          (obs_mode "pixels"/"both")
    "task"                       str            the instruction of this episode

Action space (``control``):

    "ee"     (default) float32 (4,): absolute TCP target x, y, z in metres (world frame, origin at
             the arm base, table top at z = 0) and the gripper command g in [0, 1] (0 open,
             1 closed). Inverse kinematics with the gripper pointing down turns the target
             into joint targets for the position actuators. Targets outside the workspace box
             are clipped.
    "joint"  float32 (5,): absolute joint targets (yaw, shoulder, elbow, wrist, in radians) and g.

The policy acts at ``control_hz`` (default 10 Hz); each step runs the physics for
1 / (control_hz * timestep) substeps. Reward: ``"sparse"`` gives 1.0 on the success step
and 0.0 otherwise; ``"dense"`` gives the task's progress in [0, 1) before success.
Episodes terminate on success and truncate at ``max_steps``. ``info["is_success"]``
carries the success flag, ``info["progress"]`` the progress.
"""

from __future__ import annotations

import string
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np

from sim.arm import FINGER_TRAVEL, HOME, WORKSPACE_HIGH, WORKSPACE_LOW, ArmHandles, ik
from vla.errors import ConfigError, DataError, ShapeError
from vla.types import IMAGE_PREFIX, STATE, TASK

ASSETS = Path(__file__).parent / "assets"
OBS_MODES = ("state", "pixels", "both")
CAMERAS = ("front", "wrist")
PROPRIO_DIM = 8
TEXT_SPACE = gym.spaces.Text(max_length=256, charset=frozenset(string.printable))


class ArmEnv(gym.Env):
    """Base class; a task sets the class attributes and implements the hooks at the bottom."""

    name = ""
    xml = ""  # scene file in sim/assets
    instructions: tuple[str, ...] = ()
    object_dim = 0  # size of the object features appended to the state
    default_max_steps = 50
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: str | None = None,
        obs_mode: str = "state",
        image_size: int | tuple[int, int] = 64,
        cameras: tuple[str, ...] | list[str] = CAMERAS,
        max_steps: int | None = None,
        reward: str = "sparse",
        control: str = "ee",
        control_hz: int = 10,
        render_mode: str | None = None,
        render_size: int = 128,
    ):
        if task is not None and task not in self.instructions:
            known = "; ".join(f"'{t}'" for t in self.instructions)
            raise ConfigError(f"{self.name}: unknown instruction '{task}'; known: {known}")
        if obs_mode not in OBS_MODES:
            raise ConfigError(f"{self.name}: obs_mode must be one of {OBS_MODES}, got '{obs_mode}'")
        if reward not in ("sparse", "dense"):
            raise ConfigError(f"{self.name}: reward must be 'sparse' or 'dense', got '{reward}'")
        if control not in ("ee", "joint"):
            raise ConfigError(f"{self.name}: control must be 'ee' or 'joint', got '{control}'")
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"{self.name}: render_mode must be None or 'rgb_array', got '{render_mode}'")
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown or not cameras:
            raise ConfigError(f"{self.name}: cameras must be a non-empty subset of {CAMERAS}, got {list(cameras)}")
        size = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
        if len(size) != 2 or min(size) < 8 or max(size) > 640:
            raise ConfigError(f"{self.name}: image_size must be an int or (H, W) in [8, 640], got {image_size}")
        self.fixed_task = task
        self.task = task or self.instructions[0]
        self.obs_mode, self.reward_mode, self.control = obs_mode, reward, control
        self.image_size = (int(size[0]), int(size[1]))
        self.cameras = tuple(cameras) if obs_mode != "state" else ()
        self.max_steps = int(max_steps or self.default_max_steps)
        self.control_hz = int(control_hz)
        self.render_mode, self.render_size = render_mode, int(render_size)
        self.metadata = {**self.metadata, "render_fps": self.control_hz}

        self.model = mujoco.MjModel.from_xml_path(str(ASSETS / self.xml))
        self.data = mujoco.MjData(self.model)
        self.arm = ArmHandles(self.model)
        self.substeps = max(1, round(1.0 / (self.control_hz * self.model.opt.timestep)))
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._body_ids: dict[str, int] = {}
        self._setup()

        ds = PROPRIO_DIM + (self.object_dim if obs_mode != "pixels" else 0)
        spaces = {STATE: gym.spaces.Box(-np.inf, np.inf, (ds,), np.float32)}
        for cam in self.cameras:
            spaces[IMAGE_PREFIX + cam] = gym.spaces.Box(0, 255, (*self.image_size, 3), np.uint8)
        spaces[TASK] = TEXT_SPACE
        self.observation_space = gym.spaces.Dict(spaces)
        if control == "ee":
            low, high = np.append(WORKSPACE_LOW, 0.0), np.append(WORKSPACE_HIGH, 1.0)
        else:
            low, high = np.append(self.arm.joint_low, 0.0), np.append(self.arm.joint_high, 1.0)
        self.action_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        self.steps = 0
        self.goal = 0

    # -- gymnasium API ---------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        self.task = self.fixed_task or self.instructions[int(rng.integers(len(self.instructions)))]
        self.goal = self.instructions.index(self.task)
        mujoco.mj_resetData(self.model, self.data)
        self._place(rng)
        start = HOME + rng.uniform(-0.03, 0.03, 3)
        self.arm.set_pose(self.data, ik(start), 0.0)
        mujoco.mj_forward(self.model, self.data)
        self.steps = 0
        self._start()
        return self._obs(), self._info(False)

    def step(self, action):
        a = self.check_action(action)
        if self.control == "ee":
            q, g = ik(a[:3]), a[3]
        else:
            q, g = a[:4], a[4]
        self.arm.command(self.data, q, g)
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        self.steps += 1
        success = self.is_success()
        if success:
            reward = 1.0
        else:
            reward = min(self.progress(), 0.99) if self.reward_mode == "dense" else 0.0
        truncated = self.steps >= self.max_steps and not success
        return self._obs(), reward, success, truncated, self._info(success)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self._camera("front", (self.render_size, self.render_size))

    def close(self):
        for r in self._renderers.values():
            r.close()
        self._renderers = {}

    # -- helpers shared with experts, interveners and tests ----------------------------
    def check_action(self, action) -> np.ndarray:
        """The action as float32 (Da,), clipped to the action space; bad input raises."""
        a = np.asarray(action, dtype=np.float32)
        if a.shape != self.action_space.shape:
            names = "[x, y, z, gripper]" if self.control == "ee" else "[yaw, shoulder, elbow, wrist, gripper]"
            raise ShapeError(
                f"{self.name}: action has shape {a.shape}, expected {self.action_space.shape} = {names}"
            )
        if not np.isfinite(a).all():
            raise DataError(f"{self.name}: action contains NaN or infinity: {a.tolist()}")
        return np.clip(a, self.action_space.low, self.action_space.high)

    @property
    def tcp(self) -> np.ndarray:
        return self.arm.tcp_pos(self.data)

    @property
    def closure(self) -> float:
        """Gripper closure in [0, 1]: 0 fully open, 1 fully closed."""
        return 1.0 - self.arm.opening(self.data) / FINGER_TRAVEL

    def command_to_action(self, xyz: np.ndarray, g: float) -> np.ndarray:
        """A TCP target and gripper command, in this env's action space."""
        xyz = np.clip(xyz, WORKSPACE_LOW, WORKSPACE_HIGH)
        head = xyz if self.control == "ee" else ik(xyz)
        return np.append(head, g).astype(np.float32)

    def hold_action(self) -> np.ndarray:
        """The action that keeps the arm where it is (used when a teleoperator takes over)."""
        g = 1.0 - float(self.data.ctrl[self.arm.finger_ctrl[0]]) / FINGER_TRAVEL
        return self.command_to_action(self.tcp, g)

    def set_body(self, name: str, pos, yaw: float = 0.0) -> None:
        """Place a body (free object or fixed fixture) and recompute the derived quantities."""
        body = self.model.body(name)
        quat = np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])
        jnt = body.jntadr[0]
        if jnt >= 0 and self.model.jnt_type[jnt] == mujoco.mjtJoint.mjJNT_FREE:
            adr, dof = self.model.jnt_qposadr[jnt], self.model.jnt_dofadr[jnt]
            self.data.qpos[adr : adr + 3] = pos
            self.data.qpos[adr + 3 : adr + 7] = quat
            self.data.qvel[dof : dof + 6] = 0.0
        else:
            self.model.body_pos[body.id] = pos
            self.model.body_quat[body.id] = quat
        mujoco.mj_forward(self.model, self.data)

    def snapshot(self) -> dict:
        """The state of the episode in progress (physics, step count, instruction, fixtures), for
        ``restore``: several futures can be tried from one state (e.g. Monte-Carlo values of
        candidate chunks, benchmarks/bench_rerank_ceiling.py)."""
        data = mujoco.MjData(self.model)
        mujoco.mj_copyData(data, self.model, self.data)
        return {"data": data, "steps": self.steps, "task": self.task, "goal": self.goal,
                "body_pos": self.model.body_pos.copy(), "body_quat": self.model.body_quat.copy()}

    def restore(self, snap: dict) -> dict:
        """Back to a ``snapshot`` of this env; returns the observation there."""
        mujoco.mj_copyData(self.data, self.model, snap["data"])
        self.model.body_pos[:] = snap["body_pos"]
        self.model.body_quat[:] = snap["body_quat"]
        self.steps, self.task, self.goal = snap["steps"], snap["task"], snap["goal"]
        mujoco.mj_forward(self.model, self.data)
        return self._obs()

    def body_pos(self, name: str) -> np.ndarray:
        if name not in self._body_ids:
            self._body_ids[name] = self.model.body(name).id
        return self.data.xpos[self._body_ids[name]].copy()

    def _obs(self) -> dict:
        parts = [
            self.arm.joints(self.data),
            [self.closure],
            self.tcp,
        ]
        if self.obs_mode != "pixels":
            parts.append(self._objects())
        obs = {STATE: np.concatenate(parts).astype(np.float32)}
        for cam in self.cameras:
            obs[IMAGE_PREFIX + cam] = self._camera(cam, self.image_size)
        obs[TASK] = self.task
        return obs

    def _info(self, success: bool) -> dict:
        return {"is_success": bool(success), "progress": float(self.progress()), "task": self.task}

    def _camera(self, cam: str, size: tuple[int, int]) -> np.ndarray:
        if size not in self._renderers:
            self._renderers[size] = mujoco.Renderer(self.model, height=size[0], width=size[1])
        r = self._renderers[size]
        r.update_scene(self.data, camera=cam)
        return r.render().copy()

    @staticmethod
    def sample_xy(rng, n: int, r=(0.2, 0.42), angle=(-0.9, 0.9), min_dist=0.08, avoid=()) -> list[np.ndarray]:
        """``n`` table positions in an annulus sector, pairwise at least ``min_dist`` apart."""
        out: list[np.ndarray] = []
        avoid = [np.asarray(p[:2]) for p in avoid]
        for _ in range(1000):
            rad, ang = rng.uniform(*r), rng.uniform(*angle)
            p = np.array([rad * np.cos(ang), rad * np.sin(ang)])
            if all(np.linalg.norm(p - q) >= min_dist for q in out + avoid):
                out.append(p)
                if len(out) == n:
                    return out
        raise RuntimeError(f"could not place {n} objects {min_dist} m apart")  # a bug in the ranges

    # -- task hooks ----------------------------------------------------------------------
    def _setup(self) -> None:
        """Resolve ids once, after the model is loaded."""

    def _place(self, rng: np.random.Generator) -> None:
        """Randomise the scene for ``self.goal`` (the index of the instruction)."""
        raise NotImplementedError

    def _start(self) -> None:
        """Remember what progress is measured from (after the scene is placed)."""

    def _objects(self) -> np.ndarray:
        raise NotImplementedError

    def is_success(self) -> bool:
        raise NotImplementedError

    def progress(self) -> float:
        """Task progress in [0, 1] (1 at success); the dense reward, and what interveners watch."""
        raise NotImplementedError

    def expert_waypoint(self, mem: dict) -> tuple[np.ndarray, float, float]:
        """The scripted expert's next waypoint: (TCP target (3,), gripper command, max step in m).

        Reactive: decided from the current state (``mem`` keeps the phase), so the expert
        can resume from any state a policy left the arm in.
        """
        raise NotImplementedError

    def decoy_point(self) -> np.ndarray:
        """Where a wrong first attempt heads (a distractor)."""
        raise NotImplementedError
