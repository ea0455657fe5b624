"""One clock object, so time can be injected: a 24-hour window runs in seconds in tests."""

from __future__ import annotations

import threading
import time

__all__ = ["Clock", "FastClock", "ManualClock", "SystemClock"]


class Clock:
    """Wall-clock seconds since the epoch."""

    def now(self) -> float:
        raise NotImplementedError


class SystemClock(Clock):
    def now(self) -> float:
        return time.time()


class ManualClock(Clock):
    """A clock that only moves when told to.

    Example
    -------
    >>> c = ManualClock(100.0); c.advance(3600); c.now()
    3700.0
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class FastClock(Clock):
    """Wall time sped up ``factor`` times from the moment it is made: with 14,400 a 24-hour
    window passes in 6 seconds (the demo's shadow comparison)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def now(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0) * self.factor
