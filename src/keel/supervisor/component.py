"""A supervised component: a long-running command, how to tell it is up, and what it waits for.

Example
-------
>>> import sys
>>> c = Component("clock", (sys.executable, "-c", "import time; time.sleep(60)"))
>>> c.name, str(c.health), c.depends_on
('clock', 'alive 1 s', ())
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from keel.errors import ValidationError
from keel.supervisor.health import Alive, HealthCheck

__all__ = ["Component"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class Component:
    """One command the supervisor keeps running.

    Parameters
    ----------
    name
        Letters, digits, ``-`` and ``_``; names its log file.
    argv
        The command; it should run until it is sent SIGTERM.
    health
        When a started process counts as up (default: alive for a second).
    depends_on
        Components that must be up before this one first starts. A restart does not wait
        for them: a component that needs one that is down exits again and backs off.
    env
        Variables added to the supervisor's environment for this command.
    cwd
        The folder it runs in (default: the supervisor's).
    """

    name: str
    argv: tuple[str, ...]
    health: HealthCheck = field(default_factory=Alive)
    depends_on: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValidationError(
                f"component name {self.name!r} is invalid: use letters, digits, '-' or '_'"
            )
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise ValidationError(
                f"component {self.name!r}: argv must be a non-empty sequence of strings"
            )
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "depends_on", tuple(self.depends_on))
        if self.name in self.depends_on:
            raise ValidationError(f"component {self.name!r} cannot depend on itself")
