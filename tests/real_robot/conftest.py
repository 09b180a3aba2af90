"""Small stand-ins shared by the bridge tests: a numpy arm, a deterministic chunk source,
a recorder that keeps steps in memory, and a scripted teleoperator."""

from __future__ import annotations

import threading

import numpy as np
import pytest

STATE = "observation.state"


class FakeArm:
    """A numpy arm behind the bridge: joints reach each goal by the next tick."""

    def __init__(self, dim: int = 3, start=None, fps: float = 50.0, camera: tuple | None = None):
        self.action_dim = dim
        self.joint_names = [f"j{i}" for i in range(dim)]
        self.obs_spec = {STATE: (dim,)}
        if camera is not None:
            self.obs_spec["observation.images.front"] = camera
        self.task = "reach the target"
        self.robot_type = "fake"
        self.fps = fps
        self.limits = (np.full(dim, -1.0), np.full(dim, 1.0))
        self.start = np.zeros(dim, np.float32) if start is None else np.asarray(start, np.float32)
        self.q = self.start.copy()
        self.sent: list[np.ndarray] = []
        self.closed = False
        self.on_send = None  # test hook, called with the step index after each send

    def _obs(self) -> dict:
        obs = {STATE: self.q.copy(), "task": self.task}
        if "observation.images.front" in self.obs_spec:
            obs["observation.images.front"] = np.full(self.obs_spec["observation.images.front"], 7, np.uint8)
        return obs

    def reset(self, seed=None):
        self.q = self.start.copy()
        return self._obs(), {}

    def observe(self) -> dict:
        return self._obs()

    def send(self, goal) -> dict:
        goal = np.asarray(goal, np.float32)
        self.sent.append(goal.copy())
        self.q = goal.copy()
        if self.on_send is not None:
            self.on_send(len(self.sent) - 1)
        return {"reward": 0.0, "terminated": False, "truncated": False, "is_success": False}

    def hold_goal(self, obs) -> np.ndarray:
        return np.asarray(obs[STATE], np.float32).copy()

    def close(self) -> None:
        self.closed = True


class RampSource:
    """ChunkSource: from the observed state, each joint moves ``rate`` per step towards ``target``."""

    def __init__(self, dim: int = 3, chunk_len: int = 8, target=0.8, rate=0.02, name="ramp"):
        self.chunk_len, self.action_dim, self.state_dim = chunk_len, dim, dim
        self.cameras = None
        self.name = name
        self.target = np.full(dim, target, np.float32) if np.isscalar(target) else np.asarray(target, np.float32)
        self.rate = rate
        self.calls = 0
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def chunk(self, obs: dict) -> np.ndarray:
        self.calls += 1
        s = np.asarray(obs[STATE], np.float32)
        out, q = [], s.copy()
        for _ in range(self.chunk_len):
            q = q + np.clip(self.target - q, -self.rate, self.rate)
            out.append(q.copy())
        return np.stack(out)


class StallingSource(RampSource):
    """Answers the first ``serve`` requests, then blocks until ``release`` is set (a stalled GPU)."""

    def __init__(self, serve: int = 1, **kw):
        super().__init__(**kw)
        self.serve = serve
        self.release = threading.Event()

    def chunk(self, obs: dict) -> np.ndarray:
        if self.calls >= self.serve:
            self.release.wait(10.0)
        return super().chunk(obs)


class MemoryRecorder:
    """The EpisodeWriter interface, in memory."""

    def __init__(self):
        self.steps: list[dict] = []
        self.episodes: list[tuple[str, list[dict]]] = []
        self.discarded = 0

    def add_step(self, obs, action, policy_action=None, intervention=False, reward=0.0, success=False, done=False):
        self.steps.append({"obs": obs, "action": np.asarray(action), "policy_action": np.asarray(policy_action),
                           "intervention": intervention, "success": success, "done": done})

    def end_episode(self, source, seed=None):
        self.episodes.append((source, self.steps))
        self.steps = []
        return len(self.episodes) - 1

    def discard_episode(self):
        self.steps = []
        self.discarded += 1

    def close(self):
        pass


class ScriptedLeader:
    """A LeRobot-style leader arm: ``get_action()`` gives ``{<joint>.pos: value}``."""

    def __init__(self, joint_names, pose):
        self.joint_names = list(joint_names)
        self.pose = np.asarray(pose, np.float32)
        self.reads = 0
        self.is_connected = True

    def get_action(self) -> dict:
        self.reads += 1
        return {f"{m}.pos": float(v) for m, v in zip(self.joint_names, self.pose, strict=True)}

    def disconnect(self):
        self.is_connected = False


@pytest.fixture
def fakes():
    """The stand-in classes, for tests to build what they need."""
    return type("Fakes", (), {"FakeArm": FakeArm, "RampSource": RampSource, "StallingSource": StallingSource,
                              "MemoryRecorder": MemoryRecorder, "ScriptedLeader": ScriptedLeader})
