"""The policy server: hosts a chunk source (a policy, with or without critic re-ranking)
on the GPU machine and answers observation messages with action chunks.

* binds to 127.0.0.1 unless told otherwise; any other address requires a shared token;
* every message is size-limited (websockets closes a connection whose frame is over
  the limit, code 1009, while reading it) and validated (protocol version, message
  type, keys, shapes, dtypes, finiteness, the robot's announced sizes);
* a rejected message gets an ``error`` reply with the reason, is logged and counted in
  ``rejections``, and its connection is closed; other clients keep being served, since
  inference runs in a worker thread and the event loop only parses and routes;
* inference is serialised (one at a time, the GPU is shared); its time is measured
  and sent with each chunk, so the client logs round trip and inference apart.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import ipaddress
import logging
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import numpy as np
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from real_robot.protocol import (
    MAX_MESSAGE_BYTES,
    ProtocolError,
    check_compatible,
    decode,
    encode,
    parse_obs,
    parse_robot_spec,
)
from vla.errors import ConfigError

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008


@runtime_checkable
class ChunkSource(Protocol):
    """What the server hosts: one observation (env layout, numpy) -> one raw chunk (H, Da).

    ``last_action`` is the goal the robot sent last (None at an episode start); sources
    that check feasibility (a re-ranker's step limit) use it, others may omit the argument.

    Optional attributes: ``state_dim`` and ``cameras`` (checked against the robot at
    hello), ``name``, and ``reset()`` (called when a client starts an episode).
    """

    chunk_len: int
    action_dim: int

    def chunk(self, obs: dict, last_action: np.ndarray | None = None) -> np.ndarray: ...


def source_spec(source: ChunkSource) -> dict:
    cams = getattr(source, "cameras", None)
    return {
        "chunk_len": int(source.chunk_len),
        "action_dim": int(source.action_dim),
        "state_dim": getattr(source, "state_dim", None),
        "cameras": None if cams is None else list(cams),
        "name": str(getattr(source, "name", type(source).__name__)),
        "execute_steps": getattr(source, "execute_steps", None),  # the policy's own receding horizon, if any
    }


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Reject(Exception):
    def __init__(self, category: str, reason: str):
        super().__init__(reason)
        self.category, self.reason = category, reason


class PolicyServer:
    def __init__(
        self,
        source: ChunkSource,
        host: str = "127.0.0.1",
        port: int = 8765,
        token: str | None = None,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        handshake_timeout_s: float = 5.0,
        idle_timeout_s: float = 300.0,
        max_clients: int = 4,
    ):
        if not is_loopback(host) and not token:
            raise ConfigError(f"policy server binds to {host}: set a shared token (server.token=...) "
                              "or bind to 127.0.0.1 and tunnel")
        self.source, self.host, self.port = source, host, int(port)
        self.token = token or None
        self.spec = source_spec(source)
        self._takes_last_action = "last_action" in inspect.signature(source.chunk).parameters
        self.max_message_bytes = int(max_message_bytes)
        self.handshake_timeout_s, self.idle_timeout_s = handshake_timeout_s, idle_timeout_s
        self.max_clients = max_clients
        self.rejections: Counter = Counter()
        self.served = 0
        self.infer_ms: deque = deque(maxlen=1000)
        self._clients = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-infer")
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # -- one connection ----------------------------------------------------------------
    async def _handle(self, ws) -> None:
        addr = ws.remote_address
        peer = f"{addr[0]}:{addr[1]}" if addr else "?"
        if self._clients >= self.max_clients:
            await self._refuse(ws, peer, _Reject("busy", f"server already has {self.max_clients} clients"))
            return
        self._clients += 1
        try:
            robot = await self._handshake(ws)
            log.info("client %s connected: %s", peer, robot)
            while True:
                data = await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
                await self._answer(ws, data, robot)
        except _Reject as r:
            await self._refuse(ws, peer, r)
        except TimeoutError:
            log.info("client %s idle or silent for too long: closing", peer)
            await ws.close()
        except ConnectionClosed as e:
            if e.sent is not None and e.sent.code == 1009:
                self._count(peer, "oversized", f"frame over {self.max_message_bytes} bytes")
            else:
                log.info("client %s disconnected", peer)
        finally:
            self._clients -= 1

    async def _handshake(self, ws) -> dict:
        data = await asyncio.wait_for(ws.recv(), self.handshake_timeout_s)
        msg = self._decode(data)
        if msg["type"] != "hello":
            raise _Reject("malformed", f"first message must be hello, got {msg['type']}")
        token = msg.get("token", "")
        if self.token is not None and not (
            isinstance(token, str) and hmac.compare_digest(token.encode(), self.token.encode())
        ):
            raise _Reject("unauthenticated", "missing or wrong token")
        try:
            robot = parse_robot_spec(msg.get("robot"))
        except ProtocolError as e:
            raise _Reject("malformed", str(e)) from None
        why = check_compatible(robot, self.spec)
        if why is not None:
            raise _Reject("incompatible", why)
        await ws.send(encode("welcome", policy=self.spec))
        return robot

    def _decode(self, data) -> dict:
        try:
            return decode(data, self.max_message_bytes)
        except ProtocolError as e:
            category = "wrong_version" if "protocol version" in str(e) else "malformed"
            raise _Reject(category, str(e)) from None

    async def _answer(self, ws, data, robot: dict) -> None:
        msg = self._decode(data)
        if msg["type"] == "reset":
            if hasattr(self.source, "reset"):
                await asyncio.get_running_loop().run_in_executor(self._pool, self.source.reset)
            await ws.send(encode("ok"))
            return
        if msg["type"] != "obs":
            raise _Reject("malformed", f"unexpected message type {msg['type']}")
        try:
            req_id, step, obs, last_action = parse_obs(msg, robot)
        except ProtocolError as e:
            raise _Reject("malformed", str(e)) from None
        actions, infer_ms = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._infer, obs, last_action)
        if actions is None:
            log.error("policy failed on step %d: %s", step, infer_ms)
            await ws.send(encode("error", id=req_id, reason=f"policy failed: {infer_ms}"))
            return
        self.served += 1
        self.infer_ms.append(infer_ms)
        if self.served % 100 == 0:
            log.info("served %d chunks; inference p50 %.1f ms, max %.1f ms (last %d)", self.served,
                     float(np.median(self.infer_ms)), max(self.infer_ms), len(self.infer_ms))
        await ws.send(encode("chunk", id=req_id, step=step, actions=actions, infer_ms=round(infer_ms, 3)))

    def _infer(self, obs: dict, last_action: np.ndarray | None):
        """Run the source; (actions, ms) or (None, reason). Runs in the single worker thread."""
        t0 = time.perf_counter()
        try:
            if self._takes_last_action:
                actions = self.source.chunk(obs, last_action=last_action)
            else:
                actions = self.source.chunk(obs)
            actions = np.asarray(actions, dtype=np.float32)
        except Exception as e:  # a failing policy must not take the server down
            log.exception("chunk source raised")
            return None, f"{type(e).__name__}: {e}"
        ms = (time.perf_counter() - t0) * 1e3
        want = (self.spec["chunk_len"], self.spec["action_dim"])
        if actions.shape != want:
            return None, f"chunk shape {actions.shape}, announced {want}"
        if not np.isfinite(actions).all():
            return None, "chunk holds NaN or infinite values"
        log.debug("inference %.1f ms", ms)
        return actions, ms

    def _count(self, peer: str, category: str, reason: str) -> None:
        self.rejections[category] += 1
        log.warning("rejected client %s: %s: %s", peer, category, reason)

    async def _refuse(self, ws, peer: str, r: _Reject) -> None:
        self._count(peer, r.category, r.reason)
        try:
            await ws.send(encode("error", reason=f"{r.category}: {r.reason}"))
            await ws.close(POLICY_VIOLATION, r.category)
        except ConnectionClosed:
            pass

    # -- running -------------------------------------------------------------------------
    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        async with serve(self._handle, self.host, self.port, max_size=self.max_message_bytes,
                         compression=None, open_timeout=self.handshake_timeout_s,
                         ping_interval=20, ping_timeout=20) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("policy server '%s' listening on %s (token %s)", self.spec["name"], self.url,
                     "required" if self.token else "not required, loopback only")
            self._ready.set()
            await self._stop.wait()

    def serve_forever(self) -> None:
        """Blocking; Ctrl-C stops it."""
        try:
            asyncio.run(self._serve())
        except KeyboardInterrupt:
            log.info("policy server stopped")
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def start(self, timeout_s: float = 10.0) -> PolicyServer:
        """Serve from a background thread (tests, or a server inside a bigger process)."""
        def run():
            try:
                asyncio.run(self._serve())
            except BaseException as e:  # reported to the caller of start()
                self._error = e
                self._ready.set()

        self._thread = threading.Thread(target=run, name="policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"policy server did not start within {timeout_s} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=5.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._thread = None

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
