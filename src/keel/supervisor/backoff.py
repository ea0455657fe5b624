"""When to restart a component that exited: exponential backoff, and a crash loop named.

A component's first restart waits ``initial_s``, each next one ``factor`` times longer, up to
``max_s``. ``loop_restarts`` exits within ``loop_window_s`` make a crash loop: it is reported,
and retried at ``max_s``. A component that ran ``reset_after_s`` is settled: its past crashes
are forgotten and the next exit waits ``initial_s`` again.

Example
-------
>>> now = [0.0]
>>> policy = Backoff(loop_restarts=4, clock=lambda: now[0])
>>> delays = []
>>> for _ in range(5):
...     _ = policy.started()
...     now[0] += 0.1  # it dies at once, again and again
...     restart = policy.exited()
...     delays.append(restart.delay_s)
...     now[0] += restart.delay_s
>>> delays
[0.5, 1.0, 2.0, 30.0, 30.0]
>>> policy.crash_loop_
True
>>> _ = policy.started()
>>> now[0] += 60.0  # it stays up a minute
>>> policy.settle()
True
>>> policy.crash_loop_, policy.exited().delay_s
(False, 0.5)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from keel.errors import ValidationError

__all__ = ["Backoff", "Restart"]


class Restart(NamedTuple):
    """What to do after an exit: wait ``delay_s``; ``crashes`` exits fell within the loop
    window, which makes a crash loop when ``crash_loop``."""

    delay_s: float
    crashes: int
    crash_loop: bool


class Backoff:
    """The restart policy of one component (see the module's docstring).

    Parameters
    ----------
    initial_s, factor, max_s
        The first delay, its growth per consecutive exit, and its ceiling.
    reset_after_s
        How long a component must run for its past exits to be forgotten.
    loop_restarts, loop_window_s
        This many exits within this many seconds are a crash loop.
    clock
        Seconds, monotonic (default :func:`time.monotonic`).
    """

    def __init__(
        self,
        *,
        initial_s: float = 0.5,
        factor: float = 2.0,
        max_s: float = 30.0,
        reset_after_s: float = 30.0,
        loop_restarts: int = 5,
        loop_window_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < initial_s <= max_s:
            raise ValidationError(
                f"backoff needs 0 < initial_s <= max_s, got initial_s={initial_s:g}, "
                f"max_s={max_s:g}"
            )
        if not factor >= 1:
            raise ValidationError(f"backoff factor must be >= 1, got {factor:g}")
        if not reset_after_s > 0 or not loop_window_s > 0:
            raise ValidationError("backoff reset_after_s and loop_window_s must be positive")
        if loop_restarts < 1:
            raise ValidationError(f"backoff loop_restarts must be >= 1, got {loop_restarts}")
        self.initial_s = initial_s
        self.factor = factor
        self.max_s = max_s
        self.reset_after_s = reset_after_s
        self.loop_restarts = loop_restarts
        self.loop_window_s = loop_window_s
        self.clock = clock
        self.attempt_ = 0
        self.crash_loop_ = False
        self.started_at_: float | None = None
        self._exits: deque[float] = deque()

    def started(self) -> Backoff:
        """Record that the component (re)started now."""
        self.started_at_ = self.clock()
        return self

    def settle(self) -> bool:
        """Forget past exits once the running component has run ``reset_after_s``; True
        when that ended a crash loop."""
        if self.started_at_ is None or self.clock() - self.started_at_ < self.reset_after_s:
            return False
        ended = self.crash_loop_
        self.attempt_ = 0
        self.crash_loop_ = False
        self._exits.clear()
        return ended

    def exited(self) -> Restart:
        """Record that the component exited now; when to restart it."""
        self.settle()
        now = self.clock()
        self.started_at_ = None
        self._exits.append(now)
        while self._exits[0] < now - self.loop_window_s:
            self._exits.popleft()
        self.crash_loop_ = len(self._exits) >= self.loop_restarts
        if self.crash_loop_:
            delay = self.max_s
        else:
            delay = min(self.initial_s * self.factor**self.attempt_, self.max_s)
        self.attempt_ += 1
        return Restart(delay, len(self._exits), self.crash_loop_)
