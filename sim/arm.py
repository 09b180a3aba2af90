"""The arm shared by every task: geometry, inverse kinematics, and state read-outs.

The arm (``sim/assets/arm.xml``) has a base yaw joint, three pitch joints (shoulder,
elbow, wrist) and a two-finger parallel gripper. With the wrist chosen so that the
gripper points straight down, the tool centre point (TCP, between the fingertips) is a
closed-form function of (x, y, z): yaw from the bearing, shoulder and elbow from the
planar two-link triangle, wrist from keeping the fingers vertical.
"""

from __future__ import annotations

import mujoco
import numpy as np

SHOULDER_HEIGHT = 0.12
L1 = 0.25  # shoulder -> elbow
L2 = 0.25  # elbow -> wrist
TCP_OFFSET = 0.09  # wrist axis -> TCP, along the gripper
FINGER_TRAVEL = 0.04  # slide range of each finger (m)
FINGER_GAP = 0.006  # half gap between the finger pads when fully closed (m)

ARM_JOINTS = ("yaw", "shoulder", "elbow", "wrist")
FINGER_JOINTS = ("finger_l", "finger_r")

# Where the TCP may be commanded (m); targets outside are clipped to this box.
WORKSPACE_LOW = np.array([0.08, -0.38, 0.012])
WORKSPACE_HIGH = np.array([0.50, 0.38, 0.35])
HOME = np.array([0.25, 0.0, 0.20])


def ik(xyz: np.ndarray) -> np.ndarray:
    """TCP position (3,) -> arm joint angles (4,) with the gripper pointing down (elbow up).

    Unreachable targets are projected onto the reachable shell along the same bearing.
    """
    x, y, z = (float(v) for v in xyz)
    yaw = np.arctan2(y, x)
    px = np.hypot(x, y)
    pz = z + TCP_OFFSET - SHOULDER_HEIGHT
    # cos of the elbow bend; clipping projects unreachable targets onto the shell
    d = np.clip((px * px + pz * pz - L1 * L1 - L2 * L2) / (2 * L1 * L2), -0.98, 0.999)
    bend = np.arccos(d)  # elbow joint angle; positive bends the forearm down (elbow up)
    elevation = np.arctan2(pz, px) + np.arctan2(L2 * np.sin(bend), L1 + L2 * np.cos(bend))
    shoulder = -elevation  # MuJoCo's rotation about +y: a positive angle points the link down
    wrist = np.pi / 2 - shoulder - bend  # the three pitches sum to a quarter turn: gripper vertical
    return np.array([yaw, shoulder, bend, wrist])


def fk(q: np.ndarray) -> np.ndarray:
    """Arm joint angles (4,) -> TCP position (3,) (any wrist angle)."""
    yaw, a1, a2, a3 = (float(v) for v in q)
    r = L1 * np.cos(a1) + L2 * np.cos(a1 + a2) + TCP_OFFSET * np.cos(a1 + a2 + a3)
    z = SHOULDER_HEIGHT - L1 * np.sin(a1) - L2 * np.sin(a1 + a2) - TCP_OFFSET * np.sin(a1 + a2 + a3)
    return np.array([r * np.cos(yaw), r * np.sin(yaw), z])


def grip_to_ctrl(g: float) -> float:
    """Gripper command in [0, 1] (0 open, 1 closed) -> finger slide target (m)."""
    return FINGER_TRAVEL * (1.0 - float(np.clip(g, 0.0, 1.0)))


class ArmHandles:
    """Indices into a model that contains the arm, resolved once."""

    def __init__(self, model: mujoco.MjModel):
        def jid(name):
            return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)

        self.arm_qpos = np.array([model.jnt_qposadr[jid(n)] for n in ARM_JOINTS])
        self.arm_dof = np.array([model.jnt_dofadr[jid(n)] for n in ARM_JOINTS])
        self.finger_qpos = np.array([model.jnt_qposadr[jid(n)] for n in FINGER_JOINTS])
        self.finger_dof = np.array([model.jnt_dofadr[jid(n)] for n in FINGER_JOINTS])
        self.arm_ctrl = np.array(
            [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, n) for n in ARM_JOINTS]
        )
        self.finger_ctrl = np.array(
            [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, n) for n in FINGER_JOINTS]
        )
        self.tcp = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "tcp")
        self.finger_geoms = {
            mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, n) for n in FINGER_JOINTS
        }
        self.joint_low = model.jnt_range[[jid(n) for n in ARM_JOINTS], 0].copy()
        self.joint_high = model.jnt_range[[jid(n) for n in ARM_JOINTS], 1].copy()

    def tcp_pos(self, data: mujoco.MjData) -> np.ndarray:
        return data.site_xpos[self.tcp].copy()

    def joints(self, data: mujoco.MjData) -> np.ndarray:
        return data.qpos[self.arm_qpos].copy()

    def opening(self, data: mujoco.MjData) -> float:
        """Mean finger slide (m): 0 closed, FINGER_TRAVEL fully open."""
        return float(data.qpos[self.finger_qpos].mean())

    def set_pose(self, data: mujoco.MjData, q: np.ndarray, g: float) -> None:
        """Teleport the arm (reset time only) and hold it there."""
        data.qpos[self.arm_qpos] = q
        data.qvel[self.arm_dof] = 0.0
        data.qpos[self.finger_qpos] = grip_to_ctrl(g)
        data.qvel[self.finger_dof] = 0.0
        self.command(data, q, g)

    def command(self, data: mujoco.MjData, q: np.ndarray, g: float) -> None:
        data.ctrl[self.arm_ctrl] = np.clip(q, self.joint_low, self.joint_high)
        data.ctrl[self.finger_ctrl] = grip_to_ctrl(g)

    def touching(self, data: mujoco.MjData, geom: int) -> bool:
        """Whether a finger touches ``geom`` (contacts of the last step)."""
        g1, g2 = data.contact.geom1, data.contact.geom2
        hits = set(g1[g2 == geom].tolist()) | set(g2[g1 == geom].tolist())
        return bool(hits & self.finger_geoms)
