"""Takeover: LeRobot teleoperators (leader arm, keyboard, gamepad) as an ``Intervener``.

A toggle hands control to the person and back. While it is on, the teleoperator's
action is executed (through the safety filter like any other) and recorded with
``intervention = true``; the policy's proposal is still recorded as ``policy_action``.

* leader arms (``so101_leader``, ``so100_leader``, ``koch_leader``) give joint positions
  directly (``<motor>.pos``): ``JointPositionMap``. At a takeover the follower walks
  to the leader's pose at the safety filter's step limit, never in one jump;
* keyboard and gamepad give key presses or end-effector deltas; without kinematics we
  map them to joint jogging (``JogMap``: each input moves one joint at a rate), starting
  from the arm's measured joints at the moment of takeover.

The toggle is a key (``KeyBindings``, space by default) or, for the gamepad, LeRobot's
own intervention button (``TeleopEventToggle``).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from real_robot.cfgutil import cfg_get, to_plain
from real_robot.protocol import STATE
from vla.errors import ConfigError

log = logging.getLogger(__name__)

LEADER_ARMS = ("so101_leader", "so100_leader", "koch_leader")
JOG_TELEOPS = ("keyboard", "gamepad")


class Toggle:
    """Who is in control: the person (True) or the policy (False). Thread-safe (keys flip it)."""

    def __init__(self, active: bool = False):
        self._active = bool(active)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        with self._lock:
            return self._active

    def set(self, value: bool) -> None:
        with self._lock:
            changed, self._active = self._active != bool(value), bool(value)
        if changed:
            log.info("takeover: %s in control", "person" if value else "policy")

    def flip(self) -> None:
        self.set(not self.active)


class TeleopEventToggle(Toggle):
    """Follows a LeRobot teleoperator's ``get_teleop_events()[IS_INTERVENTION]`` (gamepad button)."""

    def __init__(self, teleop):
        super().__init__(False)
        self.teleop = teleop

    @property
    def active(self) -> bool:
        from lerobot.teleoperators.utils import TeleopEvents

        self.set(bool(self.teleop.get_teleop_events().get(TeleopEvents.IS_INTERVENTION, False)))
        return super().active


class JointPositionMap:
    """Leader-arm action ``{<motor>.pos: value}`` -> joint goal vector in the follower's order."""

    def __init__(self, joint_names: list[str]):
        self.joint_names = list(joint_names)

    def start(self, current: np.ndarray) -> None:
        pass

    def __call__(self, raw: dict) -> np.ndarray:
        missing = [m for m in self.joint_names if f"{m}.pos" not in raw]
        if missing:
            raise ConfigError(f"teleoperator gives {sorted(raw)}, follower needs {missing} (.pos)")
        return np.array([raw[f"{m}.pos"] for m in self.joint_names], dtype=np.float32)


class JogMap:
    """Key presses or gamepad axes -> joint jogging.

    ``bindings`` maps an input name to ``(joint index, units per tick)``: a keyboard key
    ('q', 'a', ...) counts 1 while held; a gamepad axis ('delta_x', 'delta_y',
    'delta_z') counts its value; LeRobot's gamepad 'gripper' (0 close, 1 stay, 2 open)
    counts -1, 0, +1.
    """

    def __init__(self, action_dim: int, bindings: dict[str, tuple[int, float]]):
        self.action_dim = int(action_dim)
        self.bindings = {}
        for name, (joint, rate) in bindings.items():
            if not 0 <= int(joint) < self.action_dim:
                raise ConfigError(f"jog binding {name!r}: joint {joint} outside [0, {self.action_dim})")
            self.bindings[str(name).lower()] = (int(joint), float(rate))
        self._target: np.ndarray | None = None

    def start(self, current: np.ndarray) -> None:
        """Jog from where the arm is now (its hold goal)."""
        self._target = np.asarray(current, dtype=np.float32).copy()

    def __call__(self, raw: dict) -> np.ndarray:
        if self._target is None:
            raise RuntimeError("JogMap used before start(obs)")
        for name, value in raw.items():
            binding = self.bindings.get(str(getattr(name, "char", None) or name).lower())
            if binding is None:
                continue
            if value is None:  # a held key
                amount = 1.0
            elif str(name) == "gripper":
                amount = float(value) - 1.0
            else:
                amount = float(value)
            self._target[binding[0]] += binding[1] * amount
        return self._target.copy()


class TeleopIntervener:
    """Intervener: ``act(obs, proposed) -> (executed action, took over?)``."""

    def __init__(self, teleop, mapping, toggle: Toggle, hold_goal=None):
        self.teleop, self.mapping, self.toggle = teleop, mapping, toggle
        # obs -> the goal that keeps the arm where it is (jogging starts there)
        self.hold_goal = hold_goal or (lambda obs: np.asarray(obs[STATE], dtype=np.float32))
        self._was_active = False
        self.takeovers = 0

    def reset(self) -> None:
        """Each episode starts with the policy in control."""
        self.toggle.set(False)
        self._was_active = False

    def act(self, obs: dict, proposed: np.ndarray) -> tuple[np.ndarray, bool]:
        active = self.toggle.active
        if active and not self._was_active:
            self.takeovers += 1
            self.mapping.start(self.hold_goal(obs))
        self._was_active = active
        if not active:
            return proposed, False
        return self.mapping(self.teleop.get_action()), True


class TeleopSource:
    """Record mode without a policy: the teleoperator is the only source (episodes are demos)."""

    def __init__(self, teleop, mapping, hold_goal=None):
        self.teleop, self.mapping = teleop, mapping
        self.hold_goal = hold_goal or (lambda obs: np.asarray(obs[STATE], dtype=np.float32))

    def start_episode(self, obs: dict) -> None:
        self.mapping.start(self.hold_goal(obs))

    def next_action(self, obs: dict, step: int) -> np.ndarray:
        return self.mapping(self.teleop.get_action())

    def close(self) -> None:
        pass


def make_teleop(teleop_cfg):
    """A connected LeRobot teleoperator from its config map ({type: so101_leader, port: ..., id: ...})."""
    import draccus
    import lerobot.teleoperators.gamepad  # noqa: F401  (register the types)
    import lerobot.teleoperators.keyboard  # noqa: F401
    import lerobot.teleoperators.koch_leader  # noqa: F401
    import lerobot.teleoperators.so_leader  # noqa: F401
    from lerobot.teleoperators import TeleoperatorConfig, make_teleoperator_from_config

    cfg = dict(to_plain(teleop_cfg))
    if cfg.get("type") not in LEADER_ARMS + JOG_TELEOPS:
        raise ConfigError(f"teleop type must be one of {LEADER_ARMS + JOG_TELEOPS}, got {cfg.get('type')!r}")
    try:
        config = draccus.decode(TeleoperatorConfig, cfg)
    except Exception as e:  # draccus reports unknown or missing fields with several types
        raise ConfigError(f"robot config 'teleop.lerobot' section: {e}") from None
    teleop = make_teleoperator_from_config(config)
    teleop.connect()
    return teleop


def make_mapping(teleop_type: str, joint_names: list[str], jog_cfg=None):
    if teleop_type in LEADER_ARMS:
        return JointPositionMap(joint_names)
    if teleop_type in JOG_TELEOPS:
        bindings = to_plain(jog_cfg) or {}
        if not bindings:
            raise ConfigError(f"teleop {teleop_type}: set 'jog' bindings (input: [joint index, units per tick])")
        return JogMap(len(joint_names), {k: tuple(v) for k, v in bindings.items()})
    raise ConfigError(f"teleop type {teleop_type!r} unknown")


def make_intervener(teleop_cfg, joint_names: list[str], keys, hold_goal=None) -> TeleopIntervener:
    """From the robot config's ``teleop`` section; ``keys`` (KeyBindings) gets the toggle key."""
    lerobot_cfg = cfg_get(teleop_cfg, "lerobot")
    kind = cfg_get(lerobot_cfg, "type")
    teleop = make_teleop(lerobot_cfg)
    mapping = make_mapping(kind, joint_names, cfg_get(teleop_cfg, "jog"))
    if kind == "gamepad" and cfg_get(teleop_cfg, "gamepad_toggle", True):
        toggle: Toggle = TeleopEventToggle(teleop)
    else:
        toggle = Toggle(False)
        keys.bind(cfg_get(teleop_cfg, "toggle_key", "space"), toggle.flip)
    return TeleopIntervener(teleop, mapping, toggle, hold_goal=hold_goal)
