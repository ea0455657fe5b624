"""The supervisor's current view: each component's lifecycle state, and ``state.json``.

``keel up`` rewrites ``<data_dir>/up/state.json`` on every change (a temporary file, then
:func:`os.replace`, so a reader sees the previous view or the next one, never half of one);
``keel status`` reads it. Processes are named by pid *and* start time (see
:func:`keel.jobs.worker.process_started`), so a pid reused by a later process is not taken for
the one recorded.

Example
-------
>>> import os, tempfile
>>> path = Path(tempfile.mkdtemp()) / "state.json"
>>> write_state(path, SupervisorState(pid=os.getpid(), started=process_started(os.getpid()),
...                                   started_at=0.0, updated_at=0.0))
>>> state = read_state(path)
>>> state.alive, state.components
(True, [])
>>> State.RUNNING.check(State.STARTING)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
keel.errors.ConflictError: a component cannot go from running to starting; from running it ...
"""

from __future__ import annotations

import os
import signal
from enum import StrEnum
from pathlib import Path

import msgspec

from keel.errors import ConflictError, ValidationError
from keel.jobs.worker import process_started

__all__ = [
    "ComponentStatus",
    "Exit",
    "State",
    "SupervisorState",
    "process_started",
    "read_state",
    "write_state",
]


class State(StrEnum):
    """A component's lifecycle state under the supervisor."""

    WAITING = "waiting"  # for the components it depends on to be up
    STARTING = "starting"  # started, not yet healthy
    RUNNING = "running"  # healthy
    RESTARTING = "restarting"  # exited; restarts after its backoff
    CRASH_LOOP = "crash-loop"  # exited too often lately; restarts at the longest backoff
    STOPPING = "stopping"  # sent SIGTERM
    STOPPED = "stopped"

    def check(self, new: State) -> State:
        """``new`` if a component may go there from this state, else a ConflictError."""
        allowed = _TRANSITIONS[self]
        if new not in allowed:
            raise ConflictError(
                f"a component cannot go from {self.value} to {new.value}; from {self.value} it "
                f"goes to {', '.join(s.value for s in State if s in allowed) or 'nothing'}"
            )
        return new


_TRANSITIONS: dict[State, frozenset[State]] = {
    State.WAITING: frozenset({State.STARTING, State.STOPPED}),
    State.STARTING: frozenset({State.RUNNING, State.RESTARTING, State.CRASH_LOOP, State.STOPPING}),
    State.RUNNING: frozenset({State.RESTARTING, State.CRASH_LOOP, State.STOPPING}),
    State.RESTARTING: frozenset({State.STARTING, State.STOPPED}),
    State.CRASH_LOOP: frozenset({State.STARTING, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset(),
}


class Exit(msgspec.Struct, frozen=True, kw_only=True):
    """How a process ended: its exit ``code``, or the ``signal`` that killed it; ``at`` is
    epoch seconds."""

    code: int | None
    signal: str | None
    at: float

    @classmethod
    def of(cls, returncode: int, at: float) -> Exit:
        """From a :attr:`subprocess.Popen.returncode` (negative: killed by that signal)."""
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            return cls(code=None, signal=name, at=at)
        return cls(code=returncode, signal=None, at=at)

    def __str__(self) -> str:
        return f"killed by {self.signal}" if self.signal else f"exit code {self.code}"


class ComponentStatus(msgspec.Struct, kw_only=True):
    """One component as the supervisor sees it. Times are epoch seconds: ``since`` the
    last change of state, ``up_since`` the start of the current process."""

    name: str
    state: State
    since: float
    pid: int | None = None
    started: float | None = None  # the process's start time, as process_started gives it
    up_since: float | None = None
    restarts: int = 0
    crash_loop: bool = False
    retry_at: float | None = None
    last_exit: Exit | None = None
    argv: list[str] = msgspec.field(default_factory=list)
    log: str = ""

    @property
    def alive(self) -> bool:
        """Whether the recorded process still runs (the same process, not a reused pid)."""
        return self.pid is not None and _same_process(self.pid, self.started)


class SupervisorState(msgspec.Struct, kw_only=True):
    """What ``state.json`` holds: the supervisor's own process, the server's URL, each
    component, and the components left out with why."""

    pid: int
    started: float | None
    started_at: float
    updated_at: float
    url: str | None = None
    components: list[ComponentStatus] = msgspec.field(default_factory=list)
    notes: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def alive(self) -> bool:
        """Whether the supervisor that wrote this still runs."""
        return _same_process(self.pid, self.started)


def _same_process(pid: int, started: float | None) -> bool:
    return started is not None and process_started(pid) == started


def write_state(path: str | os.PathLike[str], state: SupervisorState) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state)))
    os.replace(tmp, path)


def read_state(path: str | os.PathLike[str]) -> SupervisorState | None:
    """The state at ``path``, or None when there is none."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(raw, type=SupervisorState)
    except msgspec.DecodeError as exc:
        raise ValidationError(
            f"{str(path)!r} is not a keel up state file ({exc}); remove it if no keel up runs"
        ) from None
