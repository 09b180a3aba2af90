"""The safety layer between every source of actions (policy, person, hold) and the motors.

Each control tick one command goes in and one joint goal comes out, and the goal is
always finite, inside the joint limits, and within ``min(max_step, max_velocity * dt)``
of the previous goal (per joint), so no source can make the arm jump. In order:

1. reject: a command of the wrong shape, a non-numeric one, or one holding NaN or
   infinite values is dropped whole and the previous goal is held;
2. clip to the joint limits from the robot config;
3. clip the step from the previous goal (largest step per tick, velocity limit);
4. optional workspace box: when forward kinematics are given, the goal is pulled
   back along the step until the end effector is inside the box (or, when the arm
   starts outside, until it is no further out than before).

Every clip, rejection and hold is counted in ``counts`` and logged (DEBUG with the
numbers for clips, WARNING for rejections and holds); ``summary()`` gives the counts.
When the measured state starts outside the limits, the goal moves inwards by at most
one step per tick instead of jumping to the limit.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vla.errors import ConfigError, ShapeError

log = logging.getLogger(__name__)

COUNT_KEYS = (
    "commands", "passed", "clip_joint_limit", "clip_step", "clip_velocity", "clip_workspace",
    "reject_shape", "reject_nonfinite", "reject_workspace", "hold",
)


def _vec(value, n: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ConfigError(f"safety limits: '{name}' has {arr.shape[0] if arr.ndim else 1} values, robot has {n} joints")
    if not np.isfinite(arr).all():
        raise ConfigError(f"safety limits: '{name}' holds NaN or infinite values")
    return arr


@dataclass
class SafetyLimits:
    """Per-joint limits, all (Da,) in the robot's joint units (degrees / 0..100 gripper for LeRobot arms)."""

    low: np.ndarray
    high: np.ndarray
    max_step: np.ndarray  # largest goal change per control tick
    max_velocity: np.ndarray | None = None  # units per second
    workspace_low: np.ndarray | None = None  # (3,) end-effector box, metres
    workspace_high: np.ndarray | None = None
    forward_kinematics: Callable[[np.ndarray], np.ndarray] | None = None  # joints (Da,) -> xyz (3,)

    def __post_init__(self):
        n = int(np.asarray(self.low).reshape(-1).shape[0])
        self.low = _vec(self.low, n, "low")
        self.high = _vec(self.high, n, "high")
        self.max_step = _vec(self.max_step, n, "max_step")
        if not (self.low < self.high).all():
            raise ConfigError(f"safety limits: every 'low' must be below 'high' (low={self.low}, high={self.high})")
        if not (self.max_step > 0).all():
            raise ConfigError("safety limits: 'max_step' must be positive")
        if self.max_velocity is not None:
            self.max_velocity = _vec(self.max_velocity, n, "max_velocity")
            if not (self.max_velocity > 0).all():
                raise ConfigError("safety limits: 'max_velocity' must be positive")
        box = (self.workspace_low, self.workspace_high)
        if (box[0] is None) != (box[1] is None):
            raise ConfigError("safety limits: give both workspace_low and workspace_high, or neither")
        if box[0] is not None:
            self.workspace_low = _vec(box[0], 3, "workspace_low")
            self.workspace_high = _vec(box[1], 3, "workspace_high")
            if self.forward_kinematics is None:
                raise ConfigError("safety limits: a workspace box needs forward kinematics")

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    @classmethod
    def from_config(cls, cfg, dim: int, forward_kinematics=None, default_low=None, default_high=None):
        """From a ``limits:`` config map; ``low``/``high`` may default to the robot's own range (sim)."""
        get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
        low = get("low", None)
        high = get("high", None)
        low = default_low if low is None else low
        high = default_high if high is None else high
        if low is None or high is None or get("max_step", None) is None:
            raise ConfigError("robot config: limits need 'low', 'high' and 'max_step'")
        limits = cls(
            low=_vec(low, dim, "low"),
            high=_vec(high, dim, "high"),
            max_step=_vec(get("max_step"), dim, "max_step"),
            max_velocity=None if get("max_velocity", None) is None else _vec(get("max_velocity"), dim, "max_velocity"),
            workspace_low=get("workspace_low", None),
            workspace_high=get("workspace_high", None),
            forward_kinematics=forward_kinematics,
        )
        return limits


class SafetyFilter:
    """Turn any command into a safe goal; remembers the last goal it let through."""

    def __init__(self, limits: SafetyLimits, period_s: float, clock: Callable[[], float] = time.monotonic):
        if period_s <= 0:
            raise ConfigError(f"safety filter: control period must be positive, got {period_s}")
        self.limits = limits
        self.period_s = float(period_s)
        self.clock = clock
        self.counts: Counter = Counter({k: 0 for k in COUNT_KEYS})
        self.last_goal: np.ndarray | None = None
        self._last_time = 0.0

    def reset(self, measured) -> np.ndarray:
        """Start from the measured joint positions (the goal a hold sends until the first command)."""
        measured = np.asarray(measured, dtype=np.float64).reshape(-1)
        if measured.shape != (self.limits.dim,) or not np.isfinite(measured).all():
            raise ShapeError(
                f"safety filter: measured state {measured.shape} must be ({self.limits.dim},) and finite"
            )
        outside = (measured < self.limits.low) | (measured > self.limits.high)
        if outside.any():
            log.warning("safety: arm starts outside the joint limits at joints %s; goals move inwards step by step",
                        np.flatnonzero(outside).tolist())
        self.last_goal = measured.astype(np.float32).astype(np.float64)
        # the first command may move one full period's worth
        self._last_time = self.clock() - self.period_s
        return self.last_goal.astype(np.float32)

    def _allowed_step(self) -> tuple[np.ndarray, bool]:
        now = self.clock()
        dt = max(0.0, now - self._last_time)
        step = self.limits.max_step
        if self.limits.max_velocity is not None:
            vel_step = self.limits.max_velocity * dt
            if (vel_step < step).any():
                return np.minimum(step, vel_step), True
        return step, False

    def hold(self, reason: str = "no fresh action") -> np.ndarray:
        """The goal that keeps the arm where it was last sent."""
        self._require_reset()
        self.counts["hold"] += 1
        log.warning("safety: hold (%s)", reason)
        self._last_time = self.clock()
        return self.last_goal.astype(np.float32)

    def filter(self, command) -> np.ndarray:
        """The safe goal for this tick (float32 (Da,)); updates the reference for the next one."""
        self._require_reset()
        self.counts["commands"] += 1
        try:
            cmd = np.asarray(command, dtype=np.float64)
        except (TypeError, ValueError):
            return self._reject("reject_shape", f"command of type {type(command).__name__} is not numeric")
        if cmd.shape != (self.limits.dim,):
            return self._reject("reject_shape", f"command shape {cmd.shape}, robot needs ({self.limits.dim},)")
        if not np.isfinite(cmd).all():
            return self._reject("reject_nonfinite", "command holds NaN or infinite values")

        lim, ref = self.limits, self.last_goal
        clipped = False
        goal = np.clip(cmd, lim.low, lim.high)
        if (goal != cmd).any():
            self._event("clip_joint_limit", cmd, goal)
            clipped = True
        step, by_velocity = self._allowed_step()
        stepped = np.clip(goal, ref - step, ref + step)
        if (stepped != goal).any():
            self._event("clip_velocity" if by_velocity else "clip_step", goal, stepped)
            clipped = True
        goal = stepped
        if lim.forward_kinematics is not None and lim.workspace_low is not None:
            goal, moved = self._workspace(ref, goal)
            if goal is None:
                return self._reject("reject_workspace", "end effector would leave the workspace box")
            clipped |= moved
        if not clipped:
            self.counts["passed"] += 1
        sent = goal.astype(np.float32)
        self.last_goal = sent.astype(np.float64)  # the reference is exactly what the motors got
        self._last_time = self.clock()
        return sent

    # -- helpers ------------------------------------------------------------------
    def _violation(self, joints: np.ndarray) -> float:
        xyz = np.asarray(self.limits.forward_kinematics(joints), dtype=np.float64).reshape(3)
        if not np.isfinite(xyz).all():
            return float("inf")
        return float(np.linalg.norm(xyz - np.clip(xyz, self.limits.workspace_low, self.limits.workspace_high)))

    def _workspace(self, ref: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray | None, bool]:
        # accept goals that are inside the box or no further out than where the arm is now
        budget = self._violation(ref)
        if self._violation(goal) <= budget:
            return goal, False
        lo, hi = 0.0, 1.0  # bisect along the step for the furthest acceptable point
        for _ in range(10):
            mid = 0.5 * (lo + hi)
            if self._violation(ref + mid * (goal - ref)) <= budget:
                lo = mid
            else:
                hi = mid
        if lo == 0.0:
            return None, False
        pulled = ref + lo * (goal - ref)
        self._event("clip_workspace", goal, pulled)
        return pulled, True

    def _event(self, kind: str, before: np.ndarray, after: np.ndarray) -> None:
        self.counts[kind] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("safety: %s on joints %s: %s -> %s", kind, np.flatnonzero(before != after).tolist(),
                      np.round(before, 3).tolist(), np.round(after, 3).tolist())

    def _reject(self, kind: str, reason: str) -> np.ndarray:
        self.counts[kind] += 1
        log.warning("safety: %s: %s; holding the previous goal", kind, reason)
        self._last_time = self.clock()
        return self.last_goal.astype(np.float32)

    def _require_reset(self) -> None:
        if self.last_goal is None:
            raise RuntimeError("SafetyFilter.reset(measured_state) must be called before the first command")

    def summary(self) -> dict[str, int]:
        return dict(self.counts)
