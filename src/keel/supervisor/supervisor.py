"""The supervisor: start components in dependency order, watch their health, restart the
ones that exit with backoff, report crash loops, and stop them all in reverse order.

Every change is an event (:mod:`keel.supervisor.events`) and is written to ``state.json``
(:mod:`keel.supervisor.state`) in ``run_dir``, beside one log file per component.

Example
-------
>>> import sys, tempfile, threading
>>> from keel.supervisor.component import Component
>>> sleeper = Component("sleeper", (sys.executable, "-c", "import time; time.sleep(60)"))
>>> sup = Supervisor([sleeper], run_dir=tempfile.mkdtemp())
>>> sup.start()
>>> sup.status("sleeper").state.value
'starting'
>>> sup.stop()
>>> [(e.component, e.kind) for e in sup.events_]
[('supervisor', 'up'), ('sleeper', 'started'), ('sleeper', 'stopped'), ('supervisor', 'down')]
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keel.errors import ConflictError, ValidationError
from keel.supervisor.backoff import Backoff
from keel.supervisor.component import Component
from keel.supervisor.events import UP, UpEvent, publish
from keel.supervisor.process import Child, tail
from keel.supervisor.state import (
    ComponentStatus,
    Exit,
    State,
    SupervisorState,
    process_started,
    read_state,
    write_state,
)

__all__ = ["STATE_FILE", "Supervisor"]

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
#: Lines of a component's log carried by its crash-loop event.
TAIL_LINES = 20


@dataclass(slots=True)
class _Slot:
    component: Component
    status: ComponentStatus
    policy: Backoff
    child: Child | None = None
    retry_mono: float = 0.0  # when a restart is due (monotonic)
    ever_up: bool = False


class Supervisor:
    """Keep ``components`` running.

    Parameters
    ----------
    components
        In any order; each starts once the components it depends on are up.
    run_dir
        Where ``state.json`` and each component's ``<name>.log`` go.
    log_
        The event log that gets the :data:`~keel.supervisor.events.UP` events (optional).
    url
        The server's URL, recorded in the state for ``keel status``.
    notes
        Components left out, with why (recorded in the state).
    policy
        Makes each component's restart policy (default :class:`Backoff`).
    grace_s
        How long a component has to end after SIGTERM before it is sent SIGKILL.
    on_event
        Called with each event as it happens (``keel up`` prints them).
    env
        The environment the components start with (default: this process's).
    """

    def __init__(
        self,
        components: Sequence[Component],
        *,
        run_dir: str | os.PathLike[str],
        log_: Any = None,
        url: str | None = None,
        notes: dict[str, str] | None = None,
        policy: Callable[[], Backoff] = Backoff,
        grace_s: float = 10.0,
        on_event: Callable[[UpEvent], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if not components:
            raise ValidationError("nothing to supervise: no components given")
        if grace_s < 0:
            raise ValidationError(f"grace_s must be >= 0, got {grace_s:g}")
        self.run_dir = Path(run_dir)
        self.state_path = self.run_dir / STATE_FILE
        self.log = log_
        self.url = url
        self.notes = dict(notes or {})
        self.grace_s = grace_s
        self.on_event = on_event
        self.env = env
        self.events_: list[UpEvent] = []
        now = time.time()
        self._slots = {
            c.name: _Slot(
                c,
                ComponentStatus(
                    name=c.name,
                    state=State.WAITING,
                    since=now,
                    argv=list(c.argv),
                    log=str(self.run_dir / f"{c.name}.log"),
                ),
                policy(),
            )
            for c in _in_order(components)
        }
        self._started_at = now
        self._lock = threading.Lock()
        self._running = False

    # -- the lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Take over ``run_dir`` and start the components whose dependencies are met."""
        previous = read_state(self.state_path)
        if previous is not None and previous.alive and previous.pid != os.getpid():
            raise ConflictError(
                f"keel up already runs for this project (pid {previous.pid}); stop it first "
                f"(kill {previous.pid}), or see it with keel status"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if previous is not None:
            self._stop_leftovers(previous)
        if self.log is not None:
            self.log.create_topic(UP, exist_ok=True)
        self._started_at = time.time()
        self._running = True
        self._emit("supervisor", "up", pid=os.getpid(), url=self.url)
        self.poll()

    def poll(self) -> None:
        """One look at every component: notice exits and health, start what is due (nothing
        before :meth:`start` or after :meth:`stop`)."""
        changed = False
        with self._lock:
            if not self._running:
                return
            for slot in self._slots.values():
                changed |= self._check(slot)
            for slot in self._slots.values():
                changed |= self._maybe_start(slot)
            if changed:
                self._save()

    def run(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """Start, poll every ``interval_s`` until ``stop`` is set, then stop everything."""
        try:
            self.start()
            while not stop.wait(interval_s):
                self.poll()
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop every component, in reverse dependency order (what depends on another stops
        before it): SIGTERM, up to ``grace_s`` seconds, then SIGKILL."""
        with self._lock:
            if not self._running:
                return
            for slot in reversed(list(self._slots.values())):
                child = slot.child
                if child is None:
                    if slot.status.state is not State.STOPPED:
                        self._set(slot, State.STOPPED, retry_at=None)
                    continue
                self._set(slot, State.STOPPING)
                self._save()
                code = child.stop(self.grace_s)
                slot.child = None
                exit_ = Exit.of(code, time.time())
                slot.status.last_exit = exit_
                self._set(slot, State.STOPPED, pid=None, started=None, up_since=None)
                self._emit(slot.component.name, "stopped", exit=str(exit_))
            self._running = False
            self._emit("supervisor", "down", pid=os.getpid())
            self._save()

    # -- reading it ----------------------------------------------------------------------------
    def status(self, name: str) -> ComponentStatus:
        """The current status of component ``name``."""
        if name not in self._slots:
            raise ValidationError(f"no component {name!r}; components: {', '.join(self._slots)}")
        return self._slots[name].status

    def snapshot(self) -> SupervisorState:
        """What ``state.json`` holds now."""
        return SupervisorState(
            pid=os.getpid(),
            started=process_started(os.getpid()),
            started_at=self._started_at,
            updated_at=time.time(),
            url=self.url,
            components=[s.status for s in self._slots.values()],
            notes=self.notes,
        )

    # -- one component ---------------------------------------------------------------------------
    def _check(self, slot: _Slot) -> bool:
        child = slot.child
        if child is None:
            return False
        code = child.poll()
        if code is not None:
            self._exited(slot, child, code)
            return True
        if slot.status.state is State.STARTING and slot.component.health(child.uptime_s):
            slot.ever_up = True
            self._set(slot, State.RUNNING)
            self._emit(slot.component.name, "healthy", pid=child.pid)
            return True
        if slot.status.state is State.RUNNING and slot.policy.settle():
            slot.status.crash_loop = False
            self._emit(slot.component.name, "settled", pid=child.pid)
            return True
        return False

    def _exited(self, slot: _Slot, child: Child, code: int) -> None:
        name = slot.component.name
        child.signal(signal.SIGKILL)  # what it started in its group goes with it
        slot.child = None
        exit_ = Exit.of(code, time.time())
        slot.status.last_exit = exit_
        self._emit(
            name, "exited", pid=child.pid, exit=str(exit_), uptime_s=round(child.uptime_s, 1)
        )
        self._schedule_restart(slot)

    def _schedule_restart(self, slot: _Slot) -> None:
        name = slot.component.name
        restart = slot.policy.exited()
        slot.retry_mono = time.monotonic() + restart.delay_s
        state = State.CRASH_LOOP if restart.crash_loop else State.RESTARTING
        self._set(
            slot,
            state,
            pid=None,
            started=None,
            up_since=None,
            crash_loop=restart.crash_loop,
            retry_at=time.time() + restart.delay_s,
        )
        if restart.crash_loop:
            log_tail = tail(Path(slot.status.log), TAIL_LINES)
            self._emit(
                name,
                "crash-loop",
                exits=restart.crashes,
                window_s=slot.policy.loop_window_s,
                delay_s=restart.delay_s,
                log=slot.status.log,
                log_tail=log_tail,
            )
            logger.error(
                "%s is crash-looping: %d exits within %g s; retrying every %g s. Last lines of %s:"
                "\n%s",
                name,
                restart.crashes,
                slot.policy.loop_window_s,
                restart.delay_s,
                slot.status.log,
                "\n".join(log_tail),
            )
        else:
            self._emit(name, "restarting", delay_s=round(restart.delay_s, 3))

    def _maybe_start(self, slot: _Slot) -> bool:
        state = slot.status.state
        if state is State.WAITING:
            if not self._dependencies_up(slot):
                return False
        elif state in (State.RESTARTING, State.CRASH_LOOP):
            if time.monotonic() < slot.retry_mono:
                return False
        else:
            return False
        try:
            child = Child.start(slot.component, Path(slot.status.log), self.env)
        except OSError as exc:  # no such program, not executable...
            self._set(slot, State.STARTING)
            self._emit(slot.component.name, "exited", error=str(exc))
            slot.status.last_exit = Exit(code=127, signal=None, at=time.time())
            self._schedule_restart(slot)
            return True
        slot.child = child
        slot.policy.started()
        if state is not State.WAITING:
            slot.status.restarts += 1
        self._set(
            slot,
            State.STARTING,
            pid=child.pid,
            started=child.started,
            up_since=child.started_at,
            retry_at=None,
        )
        self._emit(slot.component.name, "started", pid=child.pid)
        return True

    def _dependencies_up(self, slot: _Slot) -> bool:
        return all(self._slots[d].ever_up for d in slot.component.depends_on if d in self._slots)

    def _stop_leftovers(self, previous: SupervisorState) -> None:
        """Stop the components a supervisor that died without stopping them left running."""
        for status in previous.components:
            if status.pid is None or not status.alive:
                continue
            logger.warning(
                "stopping %s (pid %d), left running by a keel up that died", status.name, status.pid
            )
            try:
                os.killpg(status.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + self.grace_s
            while status.alive and time.monotonic() < deadline:
                time.sleep(0.1)
            if status.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(status.pid, signal.SIGKILL)
            self._emit(status.name, "stopped", pid=status.pid, leftover=True)

    # -- records ---------------------------------------------------------------------------------
    def _set(self, slot: _Slot, state: State, **fields: Any) -> None:
        status = slot.status
        if state is not status.state:
            status.state = status.state.check(state)
            status.since = time.time()
        for key, value in fields.items():
            setattr(status, key, value)

    def _emit(self, component: str, kind: str, **payload: Any) -> None:
        event = UpEvent(at=time.time(), component=component, kind=kind, payload=payload)
        self.events_.append(event)
        logger.info("%s", event)
        if self.on_event is not None:
            self.on_event(event)
        if self.log is not None:
            try:
                publish(self.log, [event])
            # The supervisor must outlive its event sink (a log server that restarts, say):
            # the event is still in state.json and on the logger, and the error is reported.
            except Exception:
                logger.exception("could not append %s to %s", event, UP.name)

    def _save(self) -> None:
        write_state(self.state_path, self.snapshot())


def _in_order(components: Sequence[Component]) -> list[Component]:
    """``components`` ordered so that each comes after what it depends on (stable)."""
    by_name: dict[str, Component] = {}
    for c in components:
        if c.name in by_name:
            raise ValidationError(f"component {c.name!r} is given twice")
        by_name[c.name] = c
    done: dict[str, Component] = {}
    visiting: list[str] = []

    def visit(c: Component) -> None:
        if c.name in done:
            return
        if c.name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(c.name) :], c.name])
            raise ValidationError(f"components depend on each other in a cycle: {cycle}")
        visiting.append(c.name)
        for dep in c.depends_on:
            if dep in by_name:  # a dependency run elsewhere is not waited for
                visit(by_name[dep])
        visiting.pop()
        done[c.name] = c

    for c in components:
        visit(c)
    return list(done.values())
