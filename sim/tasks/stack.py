"""Stack: red, green and blue cubes; put the named cube on top of the other named cube.

Six instructions (every ordered pair of colours), so both nouns matter; the third cube is
a distractor. State objects (9): red, green, blue cube positions (fixed order).
Success: the top cube rests on the bottom one (centred within 2 cm, one cube higher)
and the gripper has let go of it.
"""

from __future__ import annotations

import itertools

import numpy as np

from sim.base import ArmEnv
from sim.tasks.pick import CUBE_HALF, held, lift_progress, pick_place_waypoint

COLOURS = ("red", "green", "blue")
PAIRS = tuple(itertools.permutations(COLOURS, 2))  # (top, bottom)


class StackEnv(ArmEnv):
    name = "stack"
    xml = "stack.xml"
    instructions = tuple(f"stack the {top} cube on the {bottom} cube" for top, bottom in PAIRS)
    object_dim = 9
    default_max_steps = 120

    def _setup(self):
        self._geoms = {c: self.model.geom(c).id for c in COLOURS}

    def _place(self, rng):
        for colour, xy in zip(COLOURS, self.sample_xy(rng, 3, r=(0.2, 0.42), min_dist=0.09), strict=True):
            self.set_body(colour, [*xy, CUBE_HALF], yaw=np.arctan2(xy[1], xy[0]) + rng.uniform(-0.2, 0.2))

    @property
    def top(self) -> str:
        return PAIRS[self.goal][0]

    @property
    def bottom(self) -> str:
        return PAIRS[self.goal][1]

    def _start(self):
        t, b = self.body_pos(self.top), self.body_pos(self.bottom)
        self._d_reach = max(np.linalg.norm(self.tcp - t), 1e-3)
        self._d_place = max(np.linalg.norm(t[:2] - b[:2]), 1e-3)

    def _objects(self):
        return np.concatenate([self.body_pos(c) for c in COLOURS])

    def stacked(self) -> bool:
        t, b = self.body_pos(self.top), self.body_pos(self.bottom)
        return bool(np.linalg.norm(t[:2] - b[:2]) < 0.02 and abs(t[2] - b[2] - 2 * CUBE_HALF) < 0.01)

    def is_success(self) -> bool:
        released = self.closure < 0.5 and not self.arm.touching(self.data, self._geoms[self.top])
        return self.stacked() and released

    def progress(self) -> float:
        t, b = self.body_pos(self.top), self.body_pos(self.bottom)
        reach = 1.0 - np.linalg.norm(self.tcp - t) / self._d_reach
        place = 1.0 - np.linalg.norm(t[:2] - b[:2]) / self._d_place
        lift = 1.0 if self.stacked() else lift_progress(self, self.top)
        return float(np.clip(0.3 * np.clip(reach, 0, 1) + 0.2 * lift + 0.5 * np.clip(place, 0, 1), 0, 1))

    def expert_waypoint(self, mem):
        b = self.body_pos(self.bottom)
        if self.stacked() and not held(self, self.top):
            mem["phase"] = "release"  # placed: let go and back off, never re-grasp
        return pick_place_waypoint(self, mem, self.top, b[:2], b[2] + 2 * CUBE_HALF + 0.004)

    def decoy_point(self):
        (third,) = set(COLOURS) - {self.top, self.bottom}
        return self.body_pos(third)
