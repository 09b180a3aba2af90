"""Policy server over a real local socket: it answers good clients and rejects bad messages
(malformed, oversized, wrong version, unauthenticated) with a logged reason, while it
keeps serving the others."""

from __future__ import annotations

import logging

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from real_robot.protocol import PROTOCOL_VERSION, ProtocolError, decode, encode, pack_array, parse_chunk
from real_robot.server import PolicyServer
from vla.errors import ConfigError

DIM = 3
ROBOT = {"state_dim": DIM, "action_dim": DIM, "cameras": {}, "robot_type": "fake", "fps": 50}


def ws(server):
    return connect(server.url, open_timeout=2, close_timeout=0.5, compression=None, proxy=None,
                   max_size=None, ping_interval=None)


def hello(conn, token="", robot=ROBOT):
    conn.send(encode("hello", token=token, robot=robot))
    return decode(conn.recv(timeout=2))


def ask(conn, step=0, state=None):
    state = np.zeros(DIM, np.float32) if state is None else state
    conn.send(encode("obs", id=step + 1, step=step, obs={"observation.state": state, "task": "reach"}))
    return decode(conn.recv(timeout=2))


def refused(conn) -> str:
    """The error reason, after which the server must close the connection."""
    msg = decode(conn.recv(timeout=2))
    assert msg["type"] == "error"
    with pytest.raises(ConnectionClosed) as closed:
        conn.recv(timeout=2)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    return msg["reason"]


@pytest.fixture
def server(fakes):
    srv = PolicyServer(fakes.RampSource(dim=DIM, chunk_len=4), port=0, token="s3cret",
                       max_message_bytes=64 * 1024, handshake_timeout_s=0.5).start()
    yield srv
    srv.stop()


def test_good_client_gets_chunks(server):
    with ws(server) as c:
        welcome = hello(c, token="s3cret")
        assert welcome["type"] == "welcome" and welcome["policy"]["chunk_len"] == 4
        reply = ask(c, step=7)
        req_id, step, actions = parse_chunk(reply, 4, DIM)
        assert (req_id, step) == (8, 7) and actions.shape == (4, DIM) and reply["infer_ms"] >= 0
        c.send(encode("reset"))
        assert decode(c.recv(timeout=2))["type"] == "ok"
    assert server.served == 1 and server.source.resets == 1


BAD_HANDSHAKES = [
    ("garbage", lambda c: c.send(b"\x00\xff not msgpack"), "malformed"),
    ("text frame", lambda c: c.send("hello"), "malformed"),
    ("not a map", lambda c: c.send(msgpack.packb([1, 2, 3])), "malformed"),
    ("wrong version", lambda c: c.send(msgpack.packb({"v": PROTOCOL_VERSION + 1, "type": "hello", "token": "s3cret",
                                                      "robot": ROBOT})), "wrong_version"),
    ("no token", lambda c: c.send(encode("hello", robot=ROBOT)), "unauthenticated"),
    ("wrong token", lambda c: c.send(encode("hello", token="guess", robot=ROBOT)), "unauthenticated"),
    ("obs before hello", lambda c: c.send(encode("obs", id=1, step=0, obs={})), "malformed"),
    ("bad robot spec", lambda c: c.send(encode("hello", token="s3cret", robot={"state_dim": -1})), "malformed"),
    ("wrong sizes", lambda c: c.send(encode("hello", token="s3cret", robot={**ROBOT, "action_dim": 7})),
     "incompatible"),
]


def bad_obs(state):
    return encode("obs", id=1, step=0, obs={"observation.state": state, "task": "reach"})


BAD_REQUESTS = [
    ("state shape", bad_obs(np.zeros(DIM + 2, np.float32)), "malformed"),
    ("state NaN", bad_obs(np.full(DIM, np.nan, np.float32)), "malformed"),
    ("state dtype", bad_obs(np.zeros(DIM, np.uint8)), "malformed"),
    ("unannounced camera", encode("obs", id=1, step=0, obs={"observation.state": np.zeros(DIM, np.float32),
                                                            "task": "x", "observation.images.top": np.zeros(
                                                                (4, 4, 3), np.uint8)}), "malformed"),
    ("lying array", encode("obs", id=1, step=0, obs={"observation.state": {**pack_array(np.zeros(DIM, np.float32)),
                                                                         "shape": [1000]}, "task": "x"}), "malformed"),
    ("negative id", encode("obs", id=-1, step=0, obs={"observation.state": np.zeros(DIM, np.float32), "task": "x"}),
     "malformed"),
    ("unknown type", msgpack.packb({"v": PROTOCOL_VERSION, "type": "shutdown"}), "malformed"),
    ("wrong version later", msgpack.packb({"v": 0, "type": "obs"}), "wrong_version"),
]


def test_rejects_bad_messages_and_keeps_serving(server, caplog):
    with ws(server) as good, caplog.at_level(logging.WARNING, logger="real_robot.server"):
        hello(good, token="s3cret")
        for i, (name, send, category) in enumerate(BAD_HANDSHAKES):
            with ws(server) as bad:
                send(bad)
                assert category in refused(bad), name
            assert server.rejections[category] >= 1, name
            assert ask(good, step=i)["type"] == "chunk", f"good client not served after {name}"
        for i, (name, data, category) in enumerate(BAD_REQUESTS):
            with ws(server) as bad:
                hello(bad, token="s3cret")
                bad.send(data)
                assert category in refused(bad), name
            assert ask(good, step=100 + i)["type"] == "chunk", f"good client not served after {name}"
    logged = caplog.text
    for category in ("malformed", "wrong_version", "unauthenticated", "incompatible"):
        assert "rejected client 127.0.0.1:" in logged and f": {category}: " in logged


def test_oversized_message_is_cut_off_and_logged(server, caplog):
    with ws(server) as good, caplog.at_level(logging.WARNING, logger="real_robot.server"):
        hello(good, token="s3cret")
        with ws(server) as bad:
            hello(bad, token="s3cret")
            bad.send(bad_obs(np.zeros(100_000, np.float32)))  # 400 kB > 64 KiB limit
            with pytest.raises(ConnectionClosed) as closed:
                bad.recv(timeout=2)
            assert closed.value.rcvd.code == 1009
        assert ask(good)["type"] == "chunk"
    assert server.rejections["oversized"] == 1 and "oversized" in caplog.text


def test_silent_client_is_dropped_after_the_handshake_timeout(server):
    with ws(server) as silent:
        with pytest.raises(ConnectionClosed):
            silent.recv(timeout=3)


def test_failing_policy_is_reported_not_fatal(fakes):
    class Broken(fakes.RampSource):
        def chunk(self, obs):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("CUDA out of memory")
            if self.calls == 2:
                return np.full((self.chunk_len, self.action_dim), np.nan)
            return super().chunk(obs)

    with PolicyServer(Broken(dim=DIM, chunk_len=4), port=0) as srv, ws(srv) as c:
        hello(c)
        assert "CUDA out of memory" in ask(c)["reason"]
        assert "NaN" in ask(c)["reason"]
        assert ask(c)["type"] == "chunk"


def test_binding_beyond_loopback_needs_a_token(fakes):
    with pytest.raises(ConfigError, match="token"):
        PolicyServer(fakes.RampSource(), host="0.0.0.0")
    PolicyServer(fakes.RampSource(), host="0.0.0.0", token="t")  # constructing is fine; not started here
    PolicyServer(fakes.RampSource(), host="localhost")


def test_protocol_round_trip_and_limits():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    msg = decode(encode("chunk", id=1, step=2, actions=x, infer_ms=1.5))
    _, _, y = parse_chunk(msg, 3, 4)
    np.testing.assert_array_equal(x, y)
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(encode("ok") + b"\x00" * 100, max_bytes=10)
    with pytest.raises(ProtocolError, match=r"expected \(4, 4\)"):
        parse_chunk(msg, 4, 4)
    with pytest.raises(ProtocolError, match="not sendable"):
        encode("chunk", actions=np.array(["a"]))
    with pytest.raises(ProtocolError):
        encode("launch")
