"""The robot client: action chunks from a remote policy server, for the control loop.

Light on purpose: numpy, msgpack and websockets only (no torch), so it runs on the
small computer next to the arm. The network lives in one background thread that owns
the websocket; the control loop never waits on it. The loop asks for actions by step:

* a chunk answers the observation of step ``s`` and covers steps ``s .. s+H-1``;
* the next chunk is requested ahead of time, ``lead`` steps before the current one
  has run ``execute_steps`` steps (ours, else the server's hint, else the whole chunk),
  where ``lead`` grows with the measured round trip;
* a newer chunk replaces the older one as soon as it arrives (at its own offset);
* no chunk covering the current step -> ``None``: the loop's watchdog holds position.

If the server goes away the thread reconnects with backoff (a restarted server gets a
fresh hello and must still fit the robot); meanwhile the arm holds, and the safety
filter limits the first step after resuming. Round-trip and inference times are logged
and kept in ``stats``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

from real_robot.protocol import (
    MAX_MESSAGE_BYTES,
    ProtocolError,
    check_compatible,
    decode,
    encode,
    parse_chunk,
    parse_policy_spec,
)
from vla.errors import ConfigError, ShapeError, VLAError

log = logging.getLogger(__name__)


class LinkError(VLAError):
    """The policy server cannot be reached or refused us."""


@dataclass
class _Chunk:
    step: int  # the step whose observation produced it
    actions: np.ndarray  # (H, Da)


@dataclass
class LinkStats:
    requests: int = 0
    chunks: int = 0
    timeouts: int = 0
    errors: int = 0
    reconnects: int = 0
    dropped_stale: int = 0
    rtt_ms: list[float] = field(default_factory=list)
    infer_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        def p(xs, q):
            return float(np.percentile(xs, q)) if xs else None
        return {
            "requests": self.requests, "chunks": self.chunks, "timeouts": self.timeouts, "errors": self.errors,
            "reconnects": self.reconnects, "dropped_stale": self.dropped_stale,
            "rtt_ms_p50": p(self.rtt_ms, 50), "rtt_ms_p95": p(self.rtt_ms, 95),
            "infer_ms_p50": p(self.infer_ms, 50),
        }


class RemoteChunkSource:
    """ActionSource backed by a policy server at ``url`` (ws://host:port)."""

    def __init__(
        self,
        url: str,
        robot_spec: dict,
        *,
        fps: float,
        token: str = "",
        execute_steps: int | None = None,
        request_ahead: int = 1,
        timeout_s: float = 1.0,
        connect_timeout_s: float = 2.0,
        reconnect_s: tuple[float, float] = (0.05, 2.0),
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ):
        if not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"server url must start with ws:// or wss://, got {url!r}")
        self.url, self.token = url, token
        self.robot = dict(robot_spec)
        self.period = 1.0 / float(fps)
        self.execute_steps = execute_steps
        self.request_ahead = int(request_ahead)
        self.timeout_s, self.connect_timeout_s = float(timeout_s), float(connect_timeout_s)
        self.reconnect_s = reconnect_s
        self.max_message_bytes = int(max_message_bytes)
        self.policy: dict | None = None
        self.stats = LinkStats()
        self._ws = None
        self._chunk: _Chunk | None = None
        self._lock = threading.Lock()
        self._requests: queue.Queue = queue.Queue(maxsize=1)
        self._pending = threading.Event()  # a request is queued or in flight
        self._stop = threading.Event()
        self._fatal: VLAError | None = None
        self._next_id = 0
        self._last_goal: np.ndarray | None = None
        self._thread: threading.Thread | None = None

    # -- connection (worker thread, and once from the caller for the first hello) --------
    def connect(self) -> dict:
        """Open the link and check the policy against the robot; returns the policy spec.

        Raises ShapeError when sizes disagree (before any motion), LinkError when unreachable.
        """
        try:
            self._open()
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed, ProtocolError) as e:
            raise LinkError(f"policy server {self.url}: {e}") from None
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="policy-link", daemon=True)
            self._thread.start()
        return self.policy

    def _open(self) -> None:
        try:
            ws = connect(self.url, open_timeout=self.connect_timeout_s, close_timeout=0.5,
                         max_size=self.max_message_bytes, compression=None, proxy=None,
                         ping_interval=None)
        except InvalidURI as e:
            raise ConfigError(f"server url {self.url!r}: {e}") from None
        try:
            ws.send(encode("hello", token=self.token, robot={
                **self.robot, "cameras": {k: list(v) for k, v in self.robot["cameras"].items()}}))
            msg = decode(ws.recv(timeout=self.connect_timeout_s), self.max_message_bytes)
            if msg["type"] == "error":
                reason = str(msg.get("reason"))
                if reason.startswith("incompatible:"):  # sizes differ: the same error as our own check
                    raise ShapeError(f"policy at {self.url} does not fit the robot: {reason}")
                raise LinkError(f"policy server {self.url} refused the robot: {reason}")
            if msg["type"] != "welcome":
                raise ProtocolError(f"expected welcome, got {msg['type']}")
            policy = parse_policy_spec(msg.get("policy"))
            why = check_compatible(self.robot, policy)
            if why is not None:
                raise ShapeError(f"policy '{policy['name']}' at {self.url} does not fit the robot: {why}")
            if self.execute_steps is not None and not 1 <= self.execute_steps <= policy["chunk_len"]:
                raise ConfigError(f"execute_steps={self.execute_steps} must be in [1, {policy['chunk_len']}]")
        except BaseException:
            ws.close()
            raise
        self.policy, self._ws = policy, ws
        log.info("connected to policy '%s' at %s (chunk %d x %d)", policy["name"], self.url,
                 policy["chunk_len"], policy["action_dim"])

    def _drop(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # closing a broken socket may fail; it is gone either way
                pass
            self._ws = None

    def _worker(self) -> None:
        backoff = self.reconnect_s[0]
        while not self._stop.is_set():
            try:
                kind, payload = self._requests.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                if self._ws is None:
                    self._open()
                    self.stats.reconnects += 1
                    backoff = self.reconnect_s[0]
                if kind == "reset":
                    self._ws.send(encode("reset"))
                    self._expect_ok()
                else:
                    self._exchange(*payload)
            except (ShapeError, ConfigError, LinkError) as e:
                self._fatal = e  # the server changed under us: stop using it
                log.error("policy link: %s", e)
                self._drop()
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake, ProtocolError) as e:
                if isinstance(e, TimeoutError):
                    self.stats.timeouts += 1
                else:
                    self.stats.errors += 1
                log.warning("policy link: %s: %s; reconnecting in %.2f s", type(e).__name__, e, backoff)
                self._drop()
                self._stop.wait(backoff)
                backoff = min(2 * backoff, self.reconnect_s[1])
            finally:
                self._pending.clear()

    def _expect_ok(self) -> None:
        msg = decode(self._ws.recv(timeout=self.timeout_s), self.max_message_bytes)
        if msg["type"] != "ok":
            raise ProtocolError(f"expected ok, got {msg['type']}: {msg.get('reason', '')}")

    def _exchange(self, req_id: int, step: int, obs: dict, last_action: np.ndarray | None = None) -> None:
        t0 = time.monotonic()
        extra = {} if last_action is None else {"last_action": last_action}
        self._ws.send(encode("obs", id=req_id, step=step, obs=obs, **extra))
        self.stats.requests += 1
        msg = decode(self._ws.recv(timeout=self.timeout_s), self.max_message_bytes)
        rtt = (time.monotonic() - t0) * 1e3
        if msg["type"] == "error":
            self.stats.errors += 1
            log.warning("policy server rejected step %d: %s", step, msg.get("reason"))
            return
        if msg["type"] != "chunk":
            raise ProtocolError(f"expected chunk, got {msg['type']}")
        got_id, got_step, actions = parse_chunk(msg, self.policy["chunk_len"], self.policy["action_dim"])
        if got_id != req_id or got_step != step:
            raise ProtocolError(f"reply for request {got_id} (step {got_step}), expected {req_id} (step {step})")
        infer = msg.get("infer_ms")
        self.stats.chunks += 1
        self.stats.rtt_ms.append(rtt)
        if isinstance(infer, int | float):
            self.stats.infer_ms.append(float(infer))
        del self.stats.rtt_ms[:-1000], self.stats.infer_ms[:-1000]  # keep the recent ones
        log.debug("chunk for step %d: round trip %.1f ms, inference %s ms", step, rtt, infer)
        if self.stats.chunks % 100 == 0:
            log.info("policy link: %s", self.stats.summary())
        with self._lock:
            if self._chunk is None or step >= self._chunk.step:
                self._chunk = _Chunk(step, actions)
            else:
                self.stats.dropped_stale += 1

    # -- ActionSource ----------------------------------------------------------------
    def _submit(self, kind: str, payload=None) -> None:
        self._pending.set()
        try:
            self._requests.put_nowait((kind, payload))
        except queue.Full:  # the worker is behind; the queued request stays
            pass

    def start_episode(self, obs: dict) -> None:
        if self.policy is None:
            self.connect()
        with self._lock:
            self._chunk = None
        self._last_goal = None
        self._wait_idle()
        self._submit("reset")
        self._wait_idle()  # the reset must reach the server before the first observation
        # the arm is still at rest: wait for the first chunk rather than start with holds
        self._next_id += 1
        self._submit("obs", (self._next_id, 0, self._wire_obs(obs)))
        self._wait_idle()

    def note_executed(self, goal: np.ndarray) -> None:
        """The goal the loop just sent (after safety); it travels with the next request."""
        self._last_goal = np.asarray(goal, dtype=np.float32).copy()

    def _wire_obs(self, obs: dict) -> dict:
        """Only what the hello announced: the state, the cameras and the task."""
        out = {"observation.state": np.asarray(obs["observation.state"], dtype=np.float32), "task": str(obs["task"])}
        for key in self.robot["cameras"]:
            out[key] = np.asarray(obs[key], dtype=np.uint8)
        return out

    def _wait_idle(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout_s + self.connect_timeout_s)
        while self._pending.is_set() and time.monotonic() < deadline:
            time.sleep(0.001)

    def lead_steps(self) -> int:
        """How many steps ahead of need to ask: the recent round trip in steps, plus margin."""
        recent = self.stats.rtt_ms[-10:]
        rtt_steps = math.ceil(max(recent) / 1e3 / self.period) if recent else 1
        return max(self.request_ahead, rtt_steps + 1)

    def next_action(self, obs: dict, step: int) -> np.ndarray | None:
        if self._fatal is not None:
            raise self._fatal
        with self._lock:
            chunk = self._chunk
        h = self.policy["chunk_len"]
        k = self.execute_steps or self.policy.get("execute_steps") or h  # ours, else the server's hint
        due = chunk is None or step - chunk.step >= max(0, k - self.lead_steps())
        if due and not self._pending.is_set():
            self._next_id += 1
            self._submit("obs", (self._next_id, step, self._wire_obs(obs), self._last_goal))
        if chunk is None:
            return None
        i = step - chunk.step
        return chunk.actions[i].copy() if 0 <= i < h else None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self._drop()
        log.info("policy link stats: %s", self.stats.summary())


def robot_spec(obs_spec: dict[str, tuple], action_dim: int, robot_type: str, fps: float) -> dict:
    """The hello's robot map from an observation spec ({key: shape}) and the action size."""
    state = obs_spec["observation.state"]
    return {
        "state_dim": int(state[0]),
        "action_dim": int(action_dim),
        "cameras": {k: tuple(int(s) for s in v) for k, v in obs_spec.items() if k.startswith("observation.images.")},
        "robot_type": robot_type,
        "fps": float(fps),
    }
