"""Watchdog, emergency stop and the keyboard listener that can trigger them.

The watchdog does not need a thread of its own: the control loop is the only writer to
the motors and never blocks on the network (chunks arrive in a background thread), so
checking the deadline once per tick, before the goal is sent, is enough. Position
servos keep their last goal when nothing is written, which is the hold we want if the
loop itself dies.

The emergency stop is a latch: once set (by a key, a signal or code) the loop sends no
further goal, not even a hold, and ends. It is checked immediately before every write.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from vla.errors import ConfigError

log = logging.getLogger(__name__)


class Watchdog:
    """Expires when no fresh action was fed for longer than ``deadline_s``."""

    def __init__(self, deadline_s: float, clock: Callable[[], float] = time.monotonic):
        if deadline_s <= 0:
            raise ConfigError(f"watchdog deadline (deploy.watchdog_s) must be positive, got {deadline_s}")
        self.deadline_s = float(deadline_s)
        self.clock = clock
        self._last = clock()
        self.expirations = 0
        self._expired = False

    def feed(self) -> None:
        self._last = self.clock()
        if self._expired:
            log.info("watchdog: fresh actions again after a hold")
        self._expired = False

    def expired(self) -> bool:
        late = self.clock() - self._last > self.deadline_s
        if late and not self._expired:
            self.expirations += 1
            log.warning("watchdog: no fresh action for %.3f s (deadline %.3f s): holding position",
                        self.clock() - self._last, self.deadline_s)
        self._expired = late
        return late


class EmergencyStop:
    """A latch shared by the control loop and whatever can trigger it (key, signal, code)."""

    def __init__(self):
        self._event = threading.Event()
        self.reason: str | None = None
        self._saved_handlers: dict[int, object] = {}

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def trigger(self, reason: str = "requested") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()
            log.error("EMERGENCY STOP: %s; no further goals are sent", reason)

    def clear(self) -> None:
        """Re-arm after the operator has made the scene safe (a new run)."""
        self._event.clear()
        self.reason = None

    def install_signal_handlers(self, signals=(signal.SIGINT, signal.SIGTERM)) -> None:
        """Trigger on these signals (main thread only; previous handlers come back on ``uninstall``)."""
        for sig in signals:
            self._saved_handlers[sig] = signal.signal(sig, self._on_signal)

    def uninstall_signal_handlers(self) -> None:
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler)
        self._saved_handlers.clear()

    def _on_signal(self, signum, frame) -> None:
        self.trigger(f"signal {signal.Signals(signum).name}")


def key_name(key) -> str:
    """pynput key (character or special key) -> a lower-case name such as 'a', 'space', 'esc'."""
    char = getattr(key, "char", None)
    if char:
        return char.lower()
    name = getattr(key, "name", None)
    return (name or str(key)).lower()


class KeyBindings:
    """Calls a function when a bound key is pressed; ``start()`` listens with pynput if available.

    Keys are named as pynput names them ('space', 'esc', 'f1', or a character). Tests
    and other front ends call ``press(name)`` directly.
    """

    def __init__(self, bindings: dict[str, Callable[[], None]] | None = None):
        self.bindings: dict[str, Callable[[], None]] = {}
        for name, fn in (bindings or {}).items():
            self.bind(name, fn)
        self._listener = None

    def bind(self, name: str, fn: Callable[[], None]) -> None:
        self.bindings[name.lower()] = fn

    def press(self, name: str) -> None:
        fn = self.bindings.get(name.lower())
        if fn is not None:
            fn()

    def _on_press(self, key) -> None:
        self.press(key_name(key))

    def start(self) -> bool:
        """Listen to the keyboard; False (with a warning) where no keyboard can be captured."""
        try:
            from pynput import keyboard
        except Exception as e:  # ImportError, or no X display for the backend
            log.warning("keyboard keys unavailable (%s): use signals (Ctrl-C) for the emergency stop", e)
            return False
        self._listener = keyboard.Listener(on_press=self._on_press)
        self._listener.start()
        return True

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
