"""The supervisor with tiny real commands as components: restarts, crash loops, health,
dependencies, graceful and forced stops, state.json and the keel.up topic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from keel.errors import ConflictError, ValidationError
from keel.log import open_log
from keel.supervisor import (
    Alive,
    Backoff,
    Component,
    ComponentStatus,
    Exit,
    State,
    Supervisor,
    SupervisorState,
    read_events,
    read_state,
)
from keel.supervisor.state import process_started, write_state

SLEEP = (sys.executable, "-c", "import time; time.sleep(120)")


def fast() -> Backoff:
    """A policy for tests: short delays, a loop after 3 exits."""
    return Backoff(initial_s=0.05, max_s=0.2, loop_restarts=3, loop_window_s=60.0)


def poll_until(sup: Supervisor, done: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            states = {c.name: c.state.value for c in sup.snapshot().components}
            raise AssertionError(f"not reached in {timeout} s; states {states}")
        sup.poll()
        time.sleep(0.05)


def kinds(sup: Supervisor, component: str) -> list[str]:
    return [e.kind for e in sup.events_ if e.component == component]


def test_a_crashing_child_is_restarted_then_reported_as_a_crash_loop(tmp_path: Path) -> None:
    log_ = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    boom = Component(
        "boom",
        (sys.executable, "-c", "import sys; print('cannot reach the database'); sys.exit(3)"),
    )
    sup = Supervisor([boom], run_dir=tmp_path / "up", log_=log_, policy=fast)
    sup.start()
    try:
        poll_until(sup, lambda: sup.status("boom").state is State.CRASH_LOOP)
        status = sup.status("boom")
        assert status.crash_loop and status.restarts == 2
        assert str(status.last_exit) == "exit code 3"
        assert kinds(sup, "boom") == [
            "started", "exited", "restarting",
            "started", "exited", "restarting",
            "started", "exited", "crash-loop",
        ]  # fmt: skip
        loop = next(e for e in sup.events_ if e.kind == "crash-loop")
        assert loop.payload["exits"] == 3 and loop.payload["delay_s"] == 0.2
        assert "cannot reach the database" in loop.payload["log_tail"]
        # It keeps being retried, at the longest delay.
        poll_until(sup, lambda: sup.status("boom").restarts >= 3)
        # The same view in state.json, and the events on the log.
        saved = read_state(tmp_path / "up" / "state.json")
        assert saved is not None and saved.alive and saved.pid == os.getpid()
        (component,) = saved.components
        assert component.name == "boom" and component.last_exit.code == 3
        logged = read_events(log_, "boom")
        assert [e.kind for e in logged] == kinds(sup, "boom")
        assert (
            "cannot reach the database"
            in read_events(log_, "boom", ["crash-loop"])[0].payload["log_tail"]
        )
    finally:
        sup.stop()
    assert sup.status("boom").state is State.STOPPED
    assert read_events(log_, "supervisor")[-1].kind == "down"


def test_a_killed_child_is_restarted_and_healthy_again(tmp_path: Path) -> None:
    sleeper = Component("sleeper", SLEEP, health=Alive(settle_s=0.2))
    sup = Supervisor([sleeper], run_dir=tmp_path, policy=fast)
    sup.start()
    try:
        poll_until(sup, lambda: sup.status("sleeper").state is State.RUNNING)
        first = sup.status("sleeper").pid
        os.kill(first, signal.SIGKILL)
        poll_until(
            sup,
            lambda: (
                sup.status("sleeper").restarts == 1 and sup.status("sleeper").state is State.RUNNING
            ),
        )
        status = sup.status("sleeper")
        assert status.pid != first and status.alive and not status.crash_loop
        assert str(status.last_exit) == "killed by SIGKILL"
        assert kinds(sup, "sleeper") == [
            "started", "healthy", "exited", "restarting", "started", "healthy",
        ]  # fmt: skip
    finally:
        sup.stop()
    assert process_started(status.pid) is None


def test_a_component_starts_once_what_it_depends_on_is_up(tmp_path: Path) -> None:
    first = Component("first", SLEEP, health=Alive(settle_s=0.3))
    second = Component("second", SLEEP, depends_on=("first", "elsewhere"))
    sup = Supervisor([second, first], run_dir=tmp_path, policy=fast)
    sup.start()
    try:
        assert sup.status("second").state is State.WAITING
        poll_until(sup, lambda: sup.status("second").state is not State.WAITING)
        order = [(e.component, e.kind) for e in sup.events_ if e.component != "supervisor"]
        assert order.index(("first", "healthy")) < order.index(("second", "started"))
    finally:
        sup.stop()
    # Stopped in reverse order of starting: what depends on another goes first.
    stopped = [e.component for e in sup.events_ if e.kind == "stopped"]
    assert stopped == ["second", "first"]


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    stubborn = Component(
        "stubborn",
        (
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ignoring', 'SIGTERM', flush=True); time.sleep(120)",
        ),
    )
    sup = Supervisor([stubborn], run_dir=tmp_path, policy=fast, grace_s=0.3)
    sup.start()
    log_file = tmp_path / "stubborn.log"
    deadline = time.monotonic() + 30
    while "ignoring SIGTERM" not in log_file.read_text():  # the handler is in place
        assert time.monotonic() < deadline, log_file.read_text()
        time.sleep(0.05)
    sup.stop()
    assert str(sup.status("stubborn").last_exit) == "killed by SIGKILL"


def test_a_program_that_cannot_start_is_an_exit_and_is_retried(tmp_path: Path) -> None:
    missing = Component("missing", (str(tmp_path / "no-such-program"),))
    sup = Supervisor([missing], run_dir=tmp_path, policy=fast)
    sup.start()
    try:
        poll_until(sup, lambda: sup.status("missing").state is State.CRASH_LOOP)
        assert "No such file" in next(e for e in sup.events_ if e.kind == "exited").payload["error"]
    finally:
        sup.stop()


def test_a_second_supervisor_of_the_same_folder_is_refused(tmp_path: Path) -> None:
    other = subprocess.Popen(SLEEP)
    try:
        write_state(
            tmp_path / "state.json",
            SupervisorState(
                pid=other.pid,
                started=process_started(other.pid),
                started_at=time.time(),
                updated_at=time.time(),
            ),
        )
        with pytest.raises(ConflictError, match=f"already runs .*pid {other.pid}"):
            Supervisor([Component("a", SLEEP)], run_dir=tmp_path).start()
    finally:
        other.kill()
        other.wait()


def test_components_left_by_a_supervisor_that_died_are_stopped(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = subprocess.Popen(SLEEP, process_group=0)
    try:
        write_state(
            tmp_path / "state.json",
            SupervisorState(
                pid=dead.pid,
                started=123.0,
                started_at=0.0,
                updated_at=0.0,
                components=[
                    ComponentStatus(
                        name="a",
                        state=State.RUNNING,
                        since=0.0,
                        pid=leftover.pid,
                        started=process_started(leftover.pid),
                    )
                ],
            ),
        )
        sup = Supervisor([Component("a", SLEEP)], run_dir=tmp_path, grace_s=5.0)
        sup.start()
        sup.stop()
        assert leftover.wait(10) == -signal.SIGTERM
        assert [(e.component, e.kind, e.payload.get("leftover")) for e in sup.events_][:1] == [
            ("a", "stopped", True)
        ]
    finally:
        leftover.kill()
        leftover.wait()


def test_state_round_trip_and_liveness(tmp_path: Path) -> None:
    child = subprocess.Popen(SLEEP)
    state = SupervisorState(
        pid=os.getpid(),
        started=process_started(os.getpid()),
        started_at=1.0,
        updated_at=2.0,
        url="http://127.0.0.1:8000",
        components=[
            ComponentStatus(
                name="server",
                state=State.RUNNING,
                since=3.0,
                pid=child.pid,
                started=process_started(child.pid),
                up_since=2.5,
                restarts=2,
                last_exit=Exit.of(-9, 2.4),
                argv=["keel", "serve"],
                log="/x/server.log",
            )
        ],
        notes={"materializer": "in the server"},
    )
    path = tmp_path / "up" / "state.json"
    write_state(path, state)
    assert os.listdir(path.parent) == ["state.json"]  # no temporary file left behind
    back = read_state(path)
    assert back == state
    assert back.alive and back.components[0].alive
    assert str(back.components[0].last_exit) == "killed by SIGKILL"
    child.kill()
    child.wait()
    assert not back.components[0].alive
    # A pid given to a later process is not the recorded one.
    back.components[0].pid, back.components[0].started = os.getpid(), 1.0
    assert not back.components[0].alive
    assert read_state(tmp_path / "nothing.json") is None
    path.write_text("{not json")
    with pytest.raises(ValidationError, match="not a keel up state file"):
        read_state(path)


def test_lifecycle_transitions_are_checked() -> None:
    assert State.WAITING.check(State.STARTING) is State.STARTING
    assert State.CRASH_LOOP.check(State.STARTING) is State.STARTING
    with pytest.raises(ConflictError, match="from stopped to starting"):
        State.STOPPED.check(State.STARTING)


@pytest.mark.parametrize(
    ("components", "message"),
    [
        pytest.param([], "nothing to supervise", id="none"),
        pytest.param([Component("a", SLEEP), Component("a", SLEEP)], "given twice", id="duplicate"),
        pytest.param(
            [Component("a", SLEEP, depends_on=("b",)), Component("b", SLEEP, depends_on=("a",))],
            "cycle: a -> b -> a",
            id="cycle",
        ),
    ],
)
def test_bad_component_sets_are_refused(tmp_path: Path, components: list, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Supervisor(components, run_dir=tmp_path)


def test_bad_components_are_refused() -> None:
    with pytest.raises(ValidationError, match="name 'a b' is invalid"):
        Component("a b", SLEEP)
    with pytest.raises(ValidationError, match="argv must be"):
        Component("a", ())
