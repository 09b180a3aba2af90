"""Pick and place: a red and a blue cube and an open bin; put the named cube in the bin.

State objects (9): red cube, blue cube, bin centre positions (fixed order); the other
cube is a distractor, so the instruction decides which cube to pick.
Success: the named cube rests on the table inside the bin's walls.
"""

from __future__ import annotations

import numpy as np

from sim.base import ArmEnv
from sim.tasks.pick import CUBE_HALF, lift_progress, pick_place_waypoint

COLOURS = ("red", "blue")
BIN_INNER = 0.055  # half width of the bin's inside
RELEASE_Z = 0.065  # cube centre height when it is let go (its bottom clears the 3.5 cm walls)


class PickPlaceEnv(ArmEnv):
    name = "pick_place"
    xml = "pick_place.xml"
    instructions = tuple(f"put the {c} cube in the bin" for c in COLOURS)
    object_dim = 9
    default_max_steps = 100

    def _place(self, rng):
        (bin_xy,) = self.sample_xy(rng, 1, r=(0.26, 0.36), angle=(-0.8, 0.8))
        self.set_body("bin", [*bin_xy, 0.0])
        for _ in range(1000):  # cubes 8 cm apart, and clear of the bin's walls
            cubes = self.sample_xy(rng, 2, r=(0.2, 0.42), min_dist=0.08)
            if min(np.linalg.norm(c - bin_xy) for c in cubes) >= 0.13:
                break
        for colour, xy in zip(COLOURS, cubes, strict=True):
            self.set_body(colour, [*xy, CUBE_HALF], yaw=np.arctan2(xy[1], xy[0]) + rng.uniform(-0.2, 0.2))

    @property
    def cube(self) -> str:
        return COLOURS[self.goal]

    def _start(self):
        c, b = self.body_pos(self.cube), self.body_pos("bin")
        self._d_reach = max(np.linalg.norm(self.tcp - c), 1e-3)
        self._d_place = max(np.linalg.norm(c[:2] - b[:2]), 1e-3)

    def _objects(self):
        return np.concatenate([self.body_pos(c) for c in COLOURS] + [self.body_pos("bin")])

    def in_bin(self, xyz: np.ndarray) -> bool:
        d = np.abs(xyz[:2] - self.body_pos("bin")[:2])
        return bool((d < BIN_INNER - CUBE_HALF + 0.01).all())

    def is_success(self) -> bool:
        c = self.body_pos(self.cube)
        return self.in_bin(c) and c[2] < CUBE_HALF + 0.015

    def progress(self) -> float:
        c, b = self.body_pos(self.cube), self.body_pos("bin")
        reach = 1.0 - np.linalg.norm(self.tcp - c) / self._d_reach
        place = 1.0 - np.linalg.norm(c[:2] - b[:2]) / self._d_place
        lift = 1.0 if self.in_bin(c) else lift_progress(self, self.cube)
        return float(np.clip(0.3 * np.clip(reach, 0, 1) + 0.2 * lift + 0.5 * np.clip(place, 0, 1), 0, 1))

    def expert_waypoint(self, mem):
        return pick_place_waypoint(self, mem, self.cube, self.body_pos("bin")[:2], RELEASE_Z)

    def decoy_point(self):
        return self.body_pos(COLOURS[1 - self.goal])

