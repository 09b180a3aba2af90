"""Wire format between the robot client and the policy server.

Why msgpack over websockets: the robot-side computer (often a laptop or a Raspberry
Pi next to the arm) needs only ``numpy``, ``msgpack`` and ``websockets``, all pure
Python or small wheels; websockets gives framing, ping/pong keep-alive, a
per-message size limit enforced while reading, and an asyncio server that keeps
serving other clients while one misbehaves. msgpack carries binary arrays without
base64 and is strict enough to validate. ZeroMQ has no per-connection auth or size
limit without more code; gRPC needs generated stubs and a heavier runtime.

Every message is one binary websocket frame holding a msgpack map with
``"v"`` (protocol version) and ``"type"``. Arrays travel as
``{"__nd__": 1, "dtype": "float32", "shape": [...], "data": <bytes>}``.

    client -> server   hello  {token, robot: {state_dim, action_dim, cameras: {key: [H, W, 3]}, robot_type, fps}}
    server -> client   welcome {policy: {chunk_len, action_dim, state_dim, cameras, name, execute_steps?}}
    client -> server   obs    {id, step, obs: {observation.state, observation.images.<cam>, task}, last_action?}
    server -> client   chunk  {id, step, actions (H, Da) float32, infer_ms}
    client -> server   reset  {}            (a new episode starts)
    server -> client   ok     {}
    either way         error  {reason, id?}
"""

from __future__ import annotations

import math

import msgpack
import numpy as np

from vla.errors import VLAError

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # a 640x480 RGB frame is 0.9 MiB; room for several cameras
MAX_TASK_CHARS = 1000
MAX_CHUNK_LEN = 1024
MAX_DIM = 256  # no state or action vector of a real arm is bigger
ALLOWED_DTYPES = ("float32", "float64", "uint8", "int64", "bool")
MESSAGE_TYPES = ("hello", "welcome", "obs", "chunk", "reset", "ok", "error")

STATE = "observation.state"
IMAGE_PREFIX = "observation.images."
TASK = "task"


class ProtocolError(VLAError):
    """A message that is malformed, oversized, of another version or otherwise invalid."""


# -- arrays ---------------------------------------------------------------------------
def pack_array(x: np.ndarray) -> dict:
    x = np.ascontiguousarray(x)
    if x.dtype.name not in ALLOWED_DTYPES:
        raise ProtocolError(f"array dtype {x.dtype} is not sendable (allowed: {ALLOWED_DTYPES})")
    return {"__nd__": 1, "dtype": x.dtype.name, "shape": list(x.shape), "data": x.tobytes()}


def unpack_array(d, what: str) -> np.ndarray:
    if not isinstance(d, dict) or d.get("__nd__") != 1:
        raise ProtocolError(f"{what}: expected an array")
    dtype, shape, data = d.get("dtype"), d.get("shape"), d.get("data")
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"{what}: dtype {dtype!r} not allowed")
    if not isinstance(shape, list) or len(shape) > 4 or not all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 1 << 16 for s in shape
    ):
        raise ProtocolError(f"{what}: bad shape {shape!r}")
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * np.dtype(dtype).itemsize:
        raise ProtocolError(f"{what}: data length does not match shape {shape} and dtype {dtype}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _pack_default(obj):
    if isinstance(obj, np.ndarray):
        return pack_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__}")


# -- messages -------------------------------------------------------------------------
def encode(msg_type: str, **fields) -> bytes:
    if msg_type not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {msg_type!r}")
    return msgpack.packb({"v": PROTOCOL_VERSION, "type": msg_type, **fields}, default=_pack_default)


def decode(data, max_bytes: int = MAX_MESSAGE_BYTES) -> dict:
    """Bytes -> message map, checking size, encoding, version and type (not the fields)."""
    if not isinstance(data, bytes | bytearray):
        raise ProtocolError("text frame received; messages are binary msgpack")
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        msg = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"not valid msgpack ({type(e).__name__})") from None
    if not isinstance(msg, dict):
        raise ProtocolError("message is not a map")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {msg.get('v')!r}, this side speaks {PROTOCOL_VERSION}")
    if msg.get("type") not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {msg.get('type')!r}")
    return msg


def _int(msg: dict, key: str, lo: int = 0, hi: int = 1 << 62) -> int:
    v = msg.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ProtocolError(f"field {key!r} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _spec_cameras(cams, what: str) -> dict[str, tuple[int, int, int]]:
    if not isinstance(cams, dict) or len(cams) > 16:
        raise ProtocolError(f"{what}: cameras must be a map of at most 16 entries")
    out = {}
    for key, shape in cams.items():
        if not (isinstance(key, str) and key.startswith(IMAGE_PREFIX) and len(key) < 128):
            raise ProtocolError(f"{what}: camera key {key!r} must start with {IMAGE_PREFIX!r}")
        if not (isinstance(shape, list) and len(shape) == 3 and shape[2] == 3
                and all(isinstance(s, int) and 0 < s <= 4096 for s in shape)):
            raise ProtocolError(f"{what}: camera {key} shape {shape!r} must be [H, W, 3]")
        out[key] = tuple(shape)
    return out


def parse_robot_spec(spec) -> dict:
    """Validate the ``robot`` map of a hello message."""
    if not isinstance(spec, dict):
        raise ProtocolError("hello: 'robot' must be a map")
    out = {
        "state_dim": _int(spec, "state_dim", 1, MAX_DIM),
        "action_dim": _int(spec, "action_dim", 1, MAX_DIM),
        "cameras": _spec_cameras(spec.get("cameras", {}), "hello"),
        "robot_type": spec.get("robot_type", ""),
        "fps": spec.get("fps", 0),
    }
    if not isinstance(out["robot_type"], str) or len(out["robot_type"]) > 64:
        raise ProtocolError("hello: robot_type must be a short string")
    if not isinstance(out["fps"], int | float) or not 0 <= out["fps"] <= 1000:
        raise ProtocolError("hello: fps must be a number in [0, 1000]")
    return out


def parse_obs(msg: dict, robot: dict) -> tuple[int, int, dict, np.ndarray | None]:
    """Validate an ``obs`` message against the robot spec from the hello.

    Returns (id, step, obs dict, last_action): ``last_action`` (Da,) is the goal the robot
    sent last (None at an episode start), for re-rankers that check a candidate's first step.
    """
    req_id, step = _int(msg, "id"), _int(msg, "step")
    last = msg.get("last_action")
    if last is not None:
        last = unpack_array(last, "last_action")
        if last.shape != (robot["action_dim"],) or not np.issubdtype(last.dtype, np.floating):
            raise ProtocolError(f"obs: last_action {last.shape} {last.dtype}, expected ({robot['action_dim']},) float")
        if not np.isfinite(last).all():
            raise ProtocolError("obs: last_action holds NaN or infinite values")
        last = last.astype(np.float32)
    obs = msg.get("obs")
    if not isinstance(obs, dict):
        raise ProtocolError("obs: 'obs' must be a map")
    expected = {STATE, TASK, *robot["cameras"]}
    if set(obs) != expected:
        raise ProtocolError(f"obs: keys {sorted(obs)} differ from the announced {sorted(expected)}")
    task = obs[TASK]
    if not isinstance(task, str) or len(task) > MAX_TASK_CHARS:
        raise ProtocolError(f"obs: task must be a string of at most {MAX_TASK_CHARS} characters")
    state = unpack_array(obs[STATE], STATE)
    if state.shape != (robot["state_dim"],) or not np.issubdtype(state.dtype, np.floating):
        raise ProtocolError(f"obs: state shape {state.shape} {state.dtype}, expected ({robot['state_dim']},) float")
    if not np.isfinite(state).all():
        raise ProtocolError("obs: state holds NaN or infinite values")
    out = {STATE: state.astype(np.float32), TASK: task}
    for key, shape in robot["cameras"].items():
        img = unpack_array(obs[key], key)
        if img.shape != shape or img.dtype != np.uint8:
            raise ProtocolError(f"obs: {key} is {img.shape} {img.dtype}, expected {shape} uint8")
        out[key] = img
    return req_id, step, out, last


def parse_chunk(msg: dict, chunk_len: int, action_dim: int) -> tuple[int, int, np.ndarray]:
    """Validate a ``chunk`` reply: (id, step, actions (H, Da) float32, finite)."""
    req_id, step = _int(msg, "id"), _int(msg, "step")
    actions = unpack_array(msg.get("actions"), "actions")
    if actions.shape != (chunk_len, action_dim) or not np.issubdtype(actions.dtype, np.floating):
        raise ProtocolError(f"chunk: actions {actions.shape} {actions.dtype}, expected ({chunk_len}, {action_dim})")
    return req_id, step, actions.astype(np.float32)


def parse_policy_spec(spec) -> dict:
    if not isinstance(spec, dict):
        raise ProtocolError("welcome: 'policy' must be a map")
    state_dim = spec.get("state_dim")
    if state_dim is not None:
        state_dim = _int(spec, "state_dim", 1, MAX_DIM)
    cams = spec.get("cameras")
    if cams is not None and not (isinstance(cams, list) and all(isinstance(c, str) for c in cams)):
        raise ProtocolError("welcome: cameras must be a list of keys")
    chunk_len = _int(spec, "chunk_len", 1, MAX_CHUNK_LEN)
    execute_steps = spec.get("execute_steps")
    if execute_steps is not None:
        execute_steps = _int(spec, "execute_steps", 1, chunk_len)
    return {
        "chunk_len": chunk_len,
        "action_dim": _int(spec, "action_dim", 1, MAX_DIM),
        "state_dim": state_dim,
        "cameras": cams,
        "name": str(spec.get("name", "policy"))[:64],
        "execute_steps": execute_steps,
    }


def check_compatible(robot: dict, policy: dict) -> str | None:
    """Why a robot and a policy do not fit together (None when they do)."""
    if robot["action_dim"] != policy["action_dim"]:
        return f"robot action size {robot['action_dim']} != policy action size {policy['action_dim']}"
    if policy["state_dim"] is not None and robot["state_dim"] != policy["state_dim"]:
        return f"robot state size {robot['state_dim']} != policy state size {policy['state_dim']}"
    if policy["cameras"] is not None:
        missing = sorted(set(policy["cameras"]) - set(robot["cameras"]))
        if missing:
            return f"policy needs cameras {missing}, robot has {sorted(robot['cameras'])}"
    return None
