"""Human takeover from a desk: keyboard or gamepad, the MuJoCo viewer, and a takeover toggle.

A *device* turns key or button input into a ``TeleopCommand`` each control step:

* ``KeyEvents``: key events from any source, fed through ``press``/``release``/``tap``
  (thread-safe). Sources: the MuJoCo viewer's key callback (``viewer_key``), pynput
  (``KeyEvents.with_pynput()``, optional dependency), or a test's ``schedule`` of
  injected events. Keys: arrows move the gripper in x (up/down) and y (left/right),
  page up/down move it in z, ``g`` toggles the gripper, ``enter`` toggles the takeover.
* ``LeRobotTeleopDevice``: a LeRobot end-effector teleoperator (``gamepad`` or
  ``keyboard_ee``): its deltas, its gripper command (0 close, 1 stay, 2 open) and its
  hold-to-intervene button.

``TeleopIntervener(env, device)`` implements ``vla.types.Intervener``: while the person
is in control it moves a TCP target by the device's deltas (``step`` metres per step) from
where the arm was at the takeover, and the policy's proposals are only recorded.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field

import numpy as np

from vla.errors import ConfigError

DIRECTIONS = {
    "up": (1.0, 0.0, 0.0),
    "down": (-1.0, 0.0, 0.0),
    "left": (0.0, 1.0, 0.0),
    "right": (0.0, -1.0, 0.0),
    "page_up": (0.0, 0.0, 1.0),
    "page_down": (0.0, 0.0, -1.0),
}
TOGGLE_TAKEOVER = "enter"
TOGGLE_GRIPPER = "g"
# GLFW key codes, as the MuJoCo viewer's key callback reports them
GLFW_KEYS = {265: "up", 264: "down", 263: "left", 262: "right", 266: "page_up", 267: "page_down",
             257: "enter", 71: "g"}


@dataclass
class TeleopCommand:
    delta: np.ndarray = field(default_factory=lambda: np.zeros(3))  # direction per axis in [-1, 1]
    gripper: float | None = None  # new gripper command (0 open, 1 closed) or None to keep it
    gripper_toggle: bool = False  # flip the gripper (open <-> closed)
    toggle: bool = False  # the takeover key was pressed since the last poll
    held: bool | None = None  # hold-to-intervene devices: whether the button is down


class KeyEvents:
    """Keyboard device fed by key events (name, pressed); ``schedule`` injects events by poll index."""

    def __init__(self, schedule: dict[int, list[tuple[str, bool]]] | None = None):
        self._queue: queue.Queue = queue.Queue()
        self._held: set[str] = set()
        self._schedule = dict(schedule or {})
        self._polls = 0
        self._listener = None

    def press(self, key: str) -> None:
        self._queue.put((key, True))

    def release(self, key: str) -> None:
        self._queue.put((key, False))

    def tap(self, key: str) -> None:
        self.press(key)
        self.release(key)

    def viewer_key(self, keycode: int) -> None:
        """MuJoCo viewer key callback (press only): a tap of the key."""
        if keycode in GLFW_KEYS:
            self.tap(GLFW_KEYS[keycode])

    def poll(self) -> TeleopCommand:
        for key, pressed in self._schedule.pop(self._polls, []):
            self._queue.put((key, pressed))
        self._polls += 1
        active, toggle, grip = set(), False, False  # keys pressed during this poll
        while True:
            try:
                key, pressed = self._queue.get_nowait()
            except queue.Empty:
                break
            if pressed:
                active.add(key)  # a tap inside one poll still moves one step
                self._held.add(key)
                toggle ^= key == TOGGLE_TAKEOVER
                grip ^= key == TOGGLE_GRIPPER
            else:
                self._held.discard(key)
        active |= self._held
        delta = np.clip(sum((np.array(DIRECTIONS[k]) for k in active if k in DIRECTIONS), np.zeros(3)), -1, 1)
        return TeleopCommand(delta=delta, gripper_toggle=grip, toggle=toggle)

    @classmethod
    def with_pynput(cls) -> KeyEvents:
        """Listen to the desktop keyboard through pynput (pip install pynput; X11, macOS or Windows)."""
        try:
            from pynput import keyboard
        except ImportError as e:
            raise ConfigError("keyboard teleop needs pynput (pip install 'pynput>=1.7.8'); or use the viewer") from e
        dev = cls()
        names = {keyboard.Key.up: "up", keyboard.Key.down: "down", keyboard.Key.left: "left",
                 keyboard.Key.right: "right", keyboard.Key.page_up: "page_up",
                 keyboard.Key.page_down: "page_down", keyboard.Key.enter: "enter"}

        def name(key):
            return names.get(key) or getattr(key, "char", None)

        dev._listener = keyboard.Listener(on_press=lambda k: dev.press(name(k)),
                                          on_release=lambda k: dev.release(name(k)))
        dev._listener.start()
        return dev

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()


class LeRobotTeleopDevice:
    """A LeRobot end-effector teleoperator (gamepad or keyboard_ee); hold its intervention button to take over."""

    def __init__(self, teleop):
        self.teleop = teleop

    @classmethod
    def gamepad(cls) -> LeRobotTeleopDevice:
        from lerobot.teleoperators.gamepad import GamepadTeleop, GamepadTeleopConfig

        teleop = GamepadTeleop(GamepadTeleopConfig(use_gripper=True))
        teleop.connect()
        return cls(teleop)

    def poll(self) -> TeleopCommand:
        from lerobot.teleoperators.utils import TeleopEvents

        action = self.teleop.get_action()
        events = self.teleop.get_teleop_events()
        grip = int(action.get("gripper", 1))  # 0 close, 1 stay, 2 open
        delta = np.array([action.get("delta_x", 0.0), action.get("delta_y", 0.0), action.get("delta_z", 0.0)])
        return TeleopCommand(delta=np.clip(delta, -1, 1), gripper={0: 1.0, 2: 0.0}.get(grip),
                             held=bool(events.get(TeleopEvents.IS_INTERVENTION, False)))

    def close(self) -> None:
        self.teleop.disconnect()


class TeleopIntervener:
    """A person at a desk: toggles (or holds) takeover and drives the TCP with the device."""

    def __init__(self, env, device, step: float = 0.01):
        from sim.base import ArmEnv

        self.env = env.unwrapped
        if not isinstance(self.env, ArmEnv):
            raise ConfigError("teleop takeover needs one of the sim arm tasks (it drives the TCP)")
        self.device, self.step = device, float(step)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.in_control = False
        self.target = None
        self.gripper = 0.0
        self.events: list[tuple[int, str]] = []
        self._step = 0

    def act(self, obs: dict, proposed: np.ndarray) -> tuple[np.ndarray, bool]:
        cmd = self.device.poll()
        self._step += 1
        want = cmd.held if cmd.held is not None else (self.in_control ^ cmd.toggle)
        if want and not self.in_control:
            hold = self.env.hold_action()
            self.target = self.env.tcp
            self.gripper = float(hold[-1])
            self.events.append((self._step, "takeover"))
        elif self.in_control and not want:
            self.events.append((self._step, "handback"))
        self.in_control = want
        if not want:
            return np.asarray(proposed, dtype=np.float32), False
        self.target = self.target + self.step * cmd.delta
        if cmd.gripper_toggle:
            self.gripper = 1.0 - round(self.gripper)
        elif cmd.gripper is not None:
            self.gripper = cmd.gripper
        return self.env.command_to_action(self.target, self.gripper), True


class DeskViewer:
    """The MuJoCo viewer in step with the env, paced to the control rate, feeding keys to ``device``."""

    def __init__(self, env, device: KeyEvents | None = None, realtime: bool = True):
        import mujoco.viewer

        base = env.unwrapped
        callback = device.viewer_key if isinstance(device, KeyEvents) else None
        self.handle = mujoco.viewer.launch_passive(base.model, base.data, key_callback=callback)
        self.period = 1.0 / base.control_hz if realtime else 0.0
        self._last = time.monotonic()

    def sync(self) -> bool:
        """Show the current state; False once the window was closed."""
        if not self.handle.is_running():
            return False
        self.handle.sync()
        wait = self.period - (time.monotonic() - self._last)
        if wait > 0:
            time.sleep(wait)
        self._last = time.monotonic()
        return True

    def close(self) -> None:
        self.handle.close()
