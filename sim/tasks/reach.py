"""Reach: three coloured balls float above the table; move the gripper to the named one.

State objects (9): the positions of the red, green and blue balls, in that fixed order,
so a policy must read the instruction to know which one to go to.
Success: the TCP within 3 cm of the named ball.
"""

from __future__ import annotations

import numpy as np

from sim.base import ArmEnv

COLOURS = ("red", "green", "blue")
SUCCESS_DIST = 0.03


class ReachEnv(ArmEnv):
    name = "reach"
    xml = "reach.xml"
    instructions = tuple(f"reach the {c} ball" for c in COLOURS)
    object_dim = 9
    default_max_steps = 40

    def _place(self, rng):
        for colour, xy in zip(COLOURS, self.sample_xy(rng, 3, r=(0.2, 0.42), min_dist=0.1), strict=True):
            self.set_body(colour, [*xy, rng.uniform(0.04, 0.2)])

    def _start(self):
        self._d0 = max(np.linalg.norm(self.tcp - self.target), 1e-3)

    @property
    def target(self) -> np.ndarray:
        return self.body_pos(COLOURS[self.goal])

    def _objects(self):
        return np.concatenate([self.body_pos(c) for c in COLOURS])

    def is_success(self) -> bool:
        return bool(np.linalg.norm(self.tcp - self.target) < SUCCESS_DIST)

    def progress(self) -> float:
        return float(np.clip(1.0 - np.linalg.norm(self.tcp - self.target) / self._d0, 0.0, 1.0))

    def expert_waypoint(self, mem):
        return self.target, 0.0, 0.025

    def decoy_point(self):
        return self.body_pos(COLOURS[(self.goal + 1) % len(COLOURS)])
