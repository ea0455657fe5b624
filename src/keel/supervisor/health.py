"""Health checks: when a started component counts as up.

A check is called with the seconds its process has been alive and answers whether the
component is healthy. :class:`Alive` waits out a short settling time (a command that fails at
start-up exits within it); :class:`HttpReady` asks an HTTP endpoint, such as the server's
``/v2/health/ready``.

Example
-------
>>> Alive(settle_s=1.0)(0.5), Alive(settle_s=1.0)(1.5)
(False, True)
>>> HttpReady("http://127.0.0.1:9/v2/health/ready", timeout_s=0.2)(10.0)  # nothing listens
False
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Alive", "HealthCheck", "HttpReady"]


class HealthCheck(Protocol):
    def __call__(self, uptime_s: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class Alive:
    """Healthy once the process has stayed alive ``settle_s`` seconds."""

    settle_s: float = 1.0

    def __call__(self, uptime_s: float) -> bool:
        return uptime_s >= self.settle_s

    def __str__(self) -> str:
        return f"alive {self.settle_s:g} s"


@dataclass(frozen=True, slots=True)
class HttpReady:
    """Healthy once ``GET url`` answers 200."""

    url: str
    timeout_s: float = 1.0

    def __call__(self, uptime_s: float) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):  # not listening yet, or not ready (503)
            return False

    def __str__(self) -> str:
        return f"GET {self.url} answers 200"
