"""The scripted pick-and-place plan shared by the pick_place and stack tasks.

A small reactive state machine over privileged sim state. Each call looks at where the
cube and the gripper are now, so it recovers from a dropped cube or from any state a
policy left the arm in (it re-grasps), and it never moves low and sideways at once.
"""

from __future__ import annotations

import numpy as np

CUBE_HALF = 0.02
CARRY_Z = 0.12
HOVER = 0.07  # above the cube before descending
FAST, SLOW = 0.025, 0.02  # max TCP step per control step (m): 0.25 and 0.2 m/s at 10 Hz


def held(env, cube: str) -> bool:
    """The cube sits between the fingers and the fingers are stopped by it."""
    near = np.linalg.norm(env.body_pos(cube) - env.tcp) < 0.025
    return bool(near and 0.3 < env.closure < 0.9)


def pick_place_waypoint(env, mem: dict, cube: str, place_xy: np.ndarray, place_z: float):
    """(TCP target (3,), gripper command, max step) for picking ``cube`` and releasing it at the place."""
    tcp, c = env.tcp, env.body_pos(cube)
    slack = mem.get("slack", 0.0)  # a noisy expert lands less precisely: widen its tolerances
    phase = mem.setdefault("phase", "reach")
    if phase in ("lift", "carry", "lower") and not held(env, cube):
        phase = "reach"  # dropped or missed: start over
    if phase == "reach":
        if tcp[2] < 0.05 and np.linalg.norm(tcp[:2] - c[:2]) > 0.03:
            wp = np.array([tcp[0], tcp[1], 0.09])  # straight up first: do not sweep through objects
            return _set(mem, "reach", wp, 0.0, FAST)
        wp = c + [0.0, 0.0, HOVER]
        if np.linalg.norm(tcp[:2] - c[:2]) < 0.012 + slack and tcp[2] < c[2] + HOVER + 0.02 + slack:
            phase = "descend"
        else:
            return _set(mem, "reach", wp, 0.0, FAST)
    if phase == "descend":
        if np.linalg.norm(tcp[:2] - c[:2]) > 0.025 + slack:
            return _set(mem, "reach", c + [0.0, 0.0, HOVER], 0.0, FAST)
        if _near(tcp, c, slack):
            phase, mem["t"] = "grasp", 0
        else:
            return _set(mem, "descend", c, 0.0, SLOW)
    if phase == "grasp":
        mem["t"] = mem.get("t", 0) + 1
        if mem["t"] <= 3:
            return _set(mem, "grasp", c, 1.0, SLOW)
        if not held(env, cube):
            return _set(mem, "reach", c + [0.0, 0.0, HOVER], 0.0, FAST)
        phase = "lift"
    if phase == "lift":
        if tcp[2] < CARRY_Z - 0.02:
            return _set(mem, "lift", np.array([tcp[0], tcp[1], CARRY_Z]), 1.0, FAST)
        phase = "carry"
    above = np.array([place_xy[0], place_xy[1], CARRY_Z])
    if phase == "carry":
        if np.linalg.norm(tcp[:2] - place_xy) > 0.01 + slack:
            return _set(mem, "carry", above, 1.0, FAST)
        phase = "lower"
    if phase == "lower":
        target = np.array([place_xy[0], place_xy[1], place_z])
        if not _near(tcp, target, slack):
            return _set(mem, "lower", target, 1.0, SLOW)
        phase, mem["t"] = "release", 0
    if phase == "release":
        mem["t"] = mem.get("t", 0) + 1
        if mem["t"] <= 3:
            return _set(mem, "release", tcp, 0.0, SLOW)
        phase = "retreat"
    # retreat; if the cube did not end up where it should, the next reach starts over
    if tcp[2] < CARRY_Z - 0.02:
        return _set(mem, "retreat", np.array([tcp[0], tcp[1], CARRY_Z]), 0.0, FAST)
    return _set(mem, "reach", c + [0.0, 0.0, HOVER], 0.0, FAST)


def _near(tcp: np.ndarray, target: np.ndarray, slack: float) -> bool:
    """Close enough to grasp or release: the open fingers leave about 2 cm either side."""
    return bool(np.linalg.norm(tcp[:2] - target[:2]) < 0.008 + slack / 2 and abs(tcp[2] - target[2]) < 0.008 + slack / 2)


def _set(mem: dict, phase: str, wp, g: float, step: float):
    mem["phase"] = phase
    return np.asarray(wp, dtype=float), g, step


def lift_progress(env, cube: str) -> float:
    """0 on the table, 1 when lifted 4 cm while held."""
    if not held(env, cube):
        return 0.0
    return float(np.clip((env.body_pos(cube)[2] - CUBE_HALF) / 0.04, 0.0, 1.0))
