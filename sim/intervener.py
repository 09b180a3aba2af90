"""A scripted stand-in for a person who watches a policy and takes over when it strays.

``ScriptedIntervener(expert, ...)`` implements ``vla.types.Intervener``:
``act(obs, proposed) -> (executed action, took_over)``. Each step it asks the expert
what it would do, and triggers a takeover when

* the policy's proposal is farther than ``action_threshold`` from the expert's
  (a weighted L2 distance in action units) for ``patience`` steps in a row, or
* progress (``progress_fn``, e.g. the task's) has not improved by ``min_gain`` for
  ``stall_steps`` steps, or
* progress fell more than ``regress`` below its best (the state went wrong: a dropped
  cube, a block pushed away).

A person does not react at once: control passes ``delay`` steps after the trigger. While
in control the intervener executes the expert's actions, and hands back after a
correction: at least ``min_control`` steps and progress above where it took over, or at
the latest after ``max_control`` steps. Like a person, it trusts the policy less when it
has to take over again soon (within ``trust_window`` steps of handing back): each such
repeat doubles the minimum time in control (up to ``max_control``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vla.errors import ConfigError


class ScriptedIntervener:
    def __init__(
        self,
        expert,
        *,
        action_threshold: float | None = 0.05,
        patience: int = 3,
        weights: np.ndarray | list[float] | None = None,
        progress_fn: Callable[[], float] | None = None,
        stall_steps: int | None = 20,
        min_gain: float = 0.01,
        regress: float | None = 0.2,
        delay: int = 2,
        min_control: int = 5,
        max_control: int = 25,
        trust_window: int = 10,
    ):
        if delay < 0 or patience < 1 or min_control < 1 or max_control < min_control:
            raise ConfigError(
                "intervener: need delay >= 0, patience >= 1, 1 <= min_control <= max_control; "
                f"got delay={delay}, patience={patience}, min_control={min_control}, max_control={max_control}"
            )
        self.expert = expert
        self.action_threshold = action_threshold
        self.patience = int(patience)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.progress_fn = progress_fn
        self.stall_steps = stall_steps if progress_fn is not None else None
        self.regress = regress if progress_fn is not None else None
        self.min_gain = float(min_gain)
        self.delay, self.min_control, self.max_control = int(delay), int(min_control), int(max_control)
        self.trust_window = int(trust_window)
        self.reset()

    @classmethod
    def for_env(cls, env, expert, **kwargs) -> ScriptedIntervener:
        """Defaults that suit an ``ArmEnv`` task: its progress, and the gripper weighted down
        (a full open/close disagreement counts like 10 cm)."""
        from sim.base import ArmEnv

        base = env.unwrapped
        if isinstance(base, ArmEnv):
            kwargs.setdefault("progress_fn", base.progress)
            kwargs.setdefault("weights", [1.0] * (base.action_space.shape[0] - 1) + [0.1])
        return cls(expert, **kwargs)

    def reset(self, seed: int | None = None) -> None:
        if hasattr(self.expert, "reset"):
            self.expert.reset(seed)
        self.in_control = False
        self.pending = -1  # steps left before a triggered takeover starts; -1 when none
        self.strays = 0
        self.control_steps = 0
        self.best = -np.inf
        self.since_gain = 0
        self.takeover_progress = 0.0
        self.step = 0
        self.repeats = 0  # takeovers soon after a hand-back, in a row
        self.last_handback = None
        self.events: list[tuple[int, str]] = []  # (step, "takeover" | "handback")

    def deviation(self, proposed: np.ndarray, reference: np.ndarray) -> float:
        d = np.asarray(proposed, np.float64).reshape(-1) - np.asarray(reference, np.float64).reshape(-1)
        if self.weights is not None:
            d = d * self.weights
        return float(np.linalg.norm(d))

    def act(self, obs: dict, proposed: np.ndarray) -> tuple[np.ndarray, bool]:
        expert_action = np.asarray(self.expert.act(obs), dtype=np.float32)
        progress = float(self.progress_fn()) if self.progress_fn is not None else 0.0
        if progress > self.best + self.min_gain:
            self.best, self.since_gain = progress, 0
        else:
            self.since_gain += 1
        self.step += 1

        if self.in_control:
            self.control_steps += 1
            min_control = min(self.min_control * 2**self.repeats, self.max_control)
            corrected = self.control_steps >= min_control and (
                self.progress_fn is None or progress > self.takeover_progress + self.min_gain
            )
            if corrected or self.control_steps >= self.max_control:
                self._hand_back()
                return np.asarray(proposed, dtype=np.float32), False
            return expert_action, True

        if self.pending < 0 and self._triggered(proposed, expert_action, progress):
            self.pending = self.delay
        if self.pending >= 0:
            if self.pending == 0:
                self.pending = -1
                self.in_control, self.control_steps = True, 1
                self.takeover_progress = progress
                soon = self.last_handback is not None and self.step - self.last_handback <= self.trust_window
                self.repeats = self.repeats + 1 if soon else 0
                self.events.append((self.step, "takeover"))
                return expert_action, True
            self.pending -= 1
        return np.asarray(proposed, dtype=np.float32), False

    def _triggered(self, proposed, expert_action, progress) -> bool:
        if self.action_threshold is not None:
            far = self.deviation(proposed, expert_action) > self.action_threshold
            self.strays = self.strays + 1 if far else 0
            if self.strays >= self.patience:
                return True
        if self.stall_steps is not None and self.since_gain >= self.stall_steps:
            return True
        return self.regress is not None and progress < self.best - self.regress

    def _hand_back(self) -> None:
        self.in_control = False
        self.strays = 0
        self.since_gain = 0  # give the policy a fresh stall window
        self.last_handback = self.step
        self.events.append((self.step, "handback"))
