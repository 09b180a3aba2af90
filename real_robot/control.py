"""The control loop at the robot's rate: observe, choose, filter, send, record.

One tick:

    env.observe() -> source.next_action(obs, step) policy proposal, or None when nothing fresh
        -> intervener.act(obs, proposal)          a person may take over (their action, True)
        -> safety.filter(...) / safety.hold()     the only way to the motors
        -> [emergency stop checked] env.send(goal)
        -> recorder.add_step(obs, goal, policy_action=proposal, intervention=took)

The loop takes an injectable clock (``now()`` and ``sleep(dt)``) so tests run it
deterministically and as fast as the machine allows. Numpy only: the client side must
stay light.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from real_robot.guards import EmergencyStop, Watchdog
from real_robot.safety import SafetyFilter
from vla.errors import DataError, ShapeError

log = logging.getLogger(__name__)


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, dt: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, dt: float) -> None:
        if dt > 0:
            time.sleep(dt)


class FakeClock:
    """Time that moves only when the loop sleeps: deterministic tests without waiting."""

    def __init__(self, start: float = 0.0):
        self.t = float(start)

    def now(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(0.0, float(dt))


class ActionSource(Protocol):
    """Where proposals come from: a local agent, a remote policy server, a teleoperator."""

    def start_episode(self, obs: dict) -> None: ...

    def next_action(self, obs: dict, step: int) -> np.ndarray | None:
        """The action planned for this step, or None when nothing fresh is available."""

    def close(self) -> None: ...


class AgentSource:
    """A local Agent (``reset``/``act``, e.g. vla.agent.ChunkAgent), run inside the loop.

    An agent that fails on one step (ChunkAgent raises DataError on a NaN action) yields no
    fresh action, so the watchdog holds the arm instead of the program dying mid-motion.
    """

    def __init__(self, agent, seed: int | None = None):
        self.agent, self.seed = agent, seed
        self.failures = 0

    def start_episode(self, obs: dict) -> None:
        self.agent.reset(self.seed)

    def next_action(self, obs: dict, step: int) -> np.ndarray | None:
        try:
            return np.asarray(self.agent.act(obs), dtype=np.float32)
        except DataError as e:
            self.failures += 1
            log.error("agent failed at step %d: %s; no action this tick", step, e)
            return None

    def close(self) -> None:
        pass


class OperatorEvents:
    """Flags an operator raises from another thread (keys, gamepad): success, failure, rerecord, stop."""

    NAMES = ("success", "failure", "rerecord", "stop")

    def __init__(self):
        self._lock = threading.Lock()
        self._pending: set[str] = set()

    def mark(self, name: str) -> None:
        if name not in self.NAMES:
            raise ValueError(f"unknown operator event {name!r} (known: {self.NAMES})")
        with self._lock:
            self._pending.add(name)

    def take(self) -> set[str]:
        with self._lock:
            out, self._pending = self._pending, set()
        return out


@dataclass
class EpisodeResult:
    steps: int = 0
    success: bool = False
    interventions: int = 0
    holds: int = 0
    overruns: int = 0
    ended_by: str = "max_steps"  # max_steps | terminated | truncated | success | failure | rerecord | stop | estop
    episode_index: int | None = None  # in the recorded dataset, when recorded
    safety: dict = field(default_factory=dict)


class ControlLoop:
    """Runs episodes on a robot env (real or MuJoCo-backed) through the safety layer."""

    def __init__(
        self,
        env,
        source: ActionSource,
        safety: SafetyFilter,
        fps: float,
        *,
        watchdog_s: float | None = None,
        intervener=None,
        recorder=None,
        estop: EmergencyStop | None = None,
        events: OperatorEvents | None = None,
        clock: Clock | None = None,
        episode_source: str = "policy:remote",
        end_on_success: bool = True,
        summary_every_s: float = 10.0,
    ):
        self.env, self.source, self.safety = env, source, safety
        self.period = 1.0 / float(fps)
        self.clock = clock or SystemClock()
        # the safety filter and the watchdog must share the loop's clock
        self.safety.clock = self.clock.now
        self.watchdog = Watchdog(watchdog_s if watchdog_s is not None else 1.5 * self.period, self.clock.now)
        self.intervener, self.recorder = intervener, recorder
        self.estop = estop or EmergencyStop()
        self.events = events or OperatorEvents()
        self.episode_source = episode_source
        self.end_on_success = end_on_success
        self.summary_every_s = summary_every_s
        self.trace: list[dict] = []  # per tick: step, goal, proposal, took, fresh, hold, t (tests, plots)
        self.keep_trace = False

    def run_episode(self, max_steps: int, seed: int | None = None) -> EpisodeResult:
        res = EpisodeResult()
        obs, _ = self.env.reset(seed=seed)
        current = np.asarray(self.env.hold_goal(obs), dtype=np.float32)
        if current.shape != (self.safety.limits.dim,):
            raise ShapeError(
                f"robot goal has {current.shape} values but the safety limits cover {self.safety.limits.dim} joints"
            )
        self.safety.reset(current)
        self.source.start_episode(obs)
        if self.intervener is not None and hasattr(self.intervener, "reset"):
            self.intervener.reset()
        self.watchdog.feed()
        counts_before = self.safety.summary()
        next_tick = self.clock.now()
        last_summary = next_tick
        self.trace = []
        for step in range(max_steps):
            if self.estop.is_set:
                res.ended_by = "estop"
                break
            if step > 0:
                obs = self.env.observe()  # read at the start of the tick: the freshest view
            proposal = self.source.next_action(obs, step)
            fresh = proposal is not None
            if fresh:
                self.watchdog.feed()
            base = proposal if fresh else self.safety.last_goal.astype(np.float32)
            took = held = False
            if self.intervener is not None:
                executed, took = self.intervener.act(obs, base)
            if took:
                self.watchdog.feed()  # a person in control is a fresh source
                goal = self.safety.filter(executed)
            elif fresh:
                goal = self.safety.filter(proposal)
            elif self.watchdog.expired():
                goal = self.safety.hold("watchdog: no fresh action before the deadline")
                res.holds += 1
                held = True
            else:
                goal = self.safety.filter(self.safety.last_goal)  # a late tick: keep the goal
            if self.estop.is_set:  # checked right before the write
                res.ended_by = "estop"
                break
            out = self.env.send(goal)
            if hasattr(self.source, "note_executed"):
                self.source.note_executed(goal)
            reward, terminated, truncated = out["reward"], out["terminated"], out["truncated"]
            success = bool(out.get("is_success", False))
            res.interventions += int(took)
            if self.keep_trace:
                self.trace.append({"step": step, "goal": goal, "proposal": proposal, "took": took,
                                   "fresh": fresh, "hold": held, "t": self.clock.now()})
            flags = self.events.take()
            success = success or "success" in flags
            end = self._end_reason(terminated, truncated, success, flags, step == max_steps - 1)
            if self.recorder is not None:
                policy_action = proposal if fresh and _finite_shape(proposal, goal.shape) else goal
                self.recorder.add_step(obs, goal, policy_action=policy_action, intervention=took,
                                       reward=float(reward), success=success, done=end is not None)
            res.steps = step + 1
            res.success = res.success or success
            if end is not None:
                res.ended_by = end
                break
            next_tick = self._wait(next_tick, res)
            if self.clock.now() - last_summary >= self.summary_every_s:
                last_summary = self.clock.now()
                log.info("safety counts: %s", self.safety.summary())
        res.safety = {k: v - counts_before.get(k, 0) for k, v in self.safety.summary().items()}  # this episode
        self._finish_recording(res, seed)
        log.info("episode ended (%s) after %d steps: success=%s interventions=%d holds=%d safety=%s",
                 res.ended_by, res.steps, res.success, res.interventions, res.holds, res.safety)
        return res

    def _end_reason(self, terminated, truncated, success, flags, last) -> str | None:
        for name in ("stop", "rerecord", "failure"):
            if name in flags:
                return name
        if success and self.end_on_success:
            return "success"
        if terminated:
            return "terminated"
        if truncated:
            return "truncated"
        return "max_steps" if last else None

    def _wait(self, next_tick: float, res: EpisodeResult) -> float:
        next_tick += self.period
        lag = self.clock.now() - next_tick
        if lag > self.period:  # more than a period late: do not burst to catch up
            res.overruns += 1
            log.debug("control loop overrun by %.1f ms", lag * 1e3)
            return self.clock.now()
        self.clock.sleep(next_tick - self.clock.now())
        return next_tick

    def _finish_recording(self, res: EpisodeResult, seed: int | None) -> None:
        if self.recorder is None or res.steps == 0:
            return
        if res.ended_by == "rerecord":
            self.recorder.discard_episode()
            log.info("episode discarded (re-record)")
            return
        res.episode_index = self.recorder.end_episode(self.episode_source, seed)


def _finite_shape(x, shape) -> bool:
    arr = np.asarray(x)
    return arr.shape == shape and np.issubdtype(arr.dtype, np.number) and bool(np.isfinite(arr).all())
