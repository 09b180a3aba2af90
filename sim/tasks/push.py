"""Push: one block and two coloured goal zones on the table; push the block onto the named zone.

The gripper is closed and used as a pusher. State objects (9): block position, red zone
and blue zone centres (fixed order), so the instruction decides the push direction.
Success: the block centre within 3 cm of the named zone centre.
"""

from __future__ import annotations

import numpy as np

from sim.base import ArmEnv
from sim.tasks.pick import CUBE_HALF

COLOURS = ("red", "blue")
SUCCESS_DIST = 0.03
BEHIND = 0.05  # TCP distance behind the block centre before pushing
PUSH_Z = 0.025
STEP = 0.02  # TCP step per control step while pushing (m)


class PushEnv(ArmEnv):
    name = "push"
    xml = "push.xml"
    instructions = tuple(f"push the block to the {c} zone" for c in COLOURS)
    object_dim = 9
    default_max_steps = 80

    def _place(self, rng):
        for _ in range(1000):
            (block,) = self.sample_xy(rng, 1, r=(0.26, 0.34), angle=(-0.5, 0.5))
            a = rng.uniform(-np.pi, np.pi)
            dirs = [a, a + np.pi + rng.uniform(-0.7, 0.7)]  # the zones lie on roughly opposite sides
            zones = [block + rng.uniform(0.1, 0.14) * np.array([np.cos(d), np.sin(d)]) for d in dirs]
            starts = [block - BEHIND * (z - block) / np.linalg.norm(z - block) for z in zones]
            if all(self._reachable(p) for p in zones + starts):
                break
        self.set_body("block", [*block, CUBE_HALF], yaw=rng.uniform(-np.pi / 4, np.pi / 4))
        for colour, xy in zip(COLOURS, zones, strict=True):
            self.set_body(f"{colour}_zone", [*xy, 0.0])

    @staticmethod
    def _reachable(xy) -> bool:
        r, ang = np.hypot(*xy), np.arctan2(xy[1], xy[0])
        return 0.16 < r < 0.44 and abs(ang) < 1.1

    @property
    def zone(self) -> np.ndarray:
        return self.body_pos(f"{COLOURS[self.goal]}_zone")

    def _start(self):
        b = self.body_pos("block")
        self._d_reach = max(np.linalg.norm(self.tcp - self._behind()), 1e-3)
        self._d_push = max(np.linalg.norm(b[:2] - self.zone[:2]), 1e-3)

    def _behind(self) -> np.ndarray:
        b = self.body_pos("block")
        d = self.zone[:2] - b[:2]
        d /= max(np.linalg.norm(d), 1e-6)
        return np.array([*(b[:2] - BEHIND * d), PUSH_Z])

    def _objects(self):
        return np.concatenate([self.body_pos("block"), self.body_pos("red_zone"), self.body_pos("blue_zone")])

    def is_success(self) -> bool:
        return bool(np.linalg.norm(self.body_pos("block")[:2] - self.zone[:2]) < SUCCESS_DIST)

    def progress(self) -> float:
        reach = 1.0 - np.linalg.norm(self.tcp - self._behind()) / self._d_reach
        push = 1.0 - np.linalg.norm(self.body_pos("block")[:2] - self.zone[:2]) / self._d_push
        return float(np.clip(0.3 * np.clip(reach, 0, 1) + 0.7 * np.clip(push, 0, 1), 0, 1))

    def expert_waypoint(self, mem):
        tcp, b, z = self.tcp, self.body_pos("block"), self.zone
        slack = mem.get("slack", 0.0)
        d = z[:2] - b[:2]
        d /= max(np.linalg.norm(d), 1e-6)
        start = self._behind()
        rel = tcp[:2] - b[:2]
        along = rel @ d  # negative: the TCP is behind the block
        lateral = np.linalg.norm(rel - along * d)
        phase = mem.setdefault("phase", "approach")
        if phase == "push" and (lateral > 0.02 + slack or along > -0.02 or tcp[2] > 0.05):
            phase = "approach"  # slipped off the block: go round again
        if phase == "approach":
            if np.linalg.norm(tcp[:2] - start[:2]) > 0.012 + slack:
                if tcp[2] < 0.06 and np.linalg.norm(rel) < 0.09:
                    mem["phase"] = "approach"
                    return np.array([tcp[0], tcp[1], 0.08]), 1.0, 0.025  # up before crossing over the block
                mem["phase"] = "approach"
                return np.array([start[0], start[1], 0.08 if tcp[2] > 0.04 else PUSH_Z]), 1.0, 0.025
            if tcp[2] > PUSH_Z + 0.01 + slack:
                mem["phase"] = "approach"
                return start, 1.0, 0.025
            phase = "push"
        mem["phase"] = "push"
        # aim the contact point at the goal; stepping into the block pushes it along
        return np.array([*(z[:2] - (BEHIND - 0.015) * d), PUSH_Z]), 1.0, STEP

    def decoy_point(self):
        return self.body_pos(f"{COLOURS[1 - self.goal]}_zone")
