"""The restart policy, on an injected clock: no test here sleeps."""

from __future__ import annotations

import pytest

from keel.errors import ValidationError
from keel.supervisor import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def crash(policy: Backoff, clock: Clock, after_s: float = 0.1):
    """Start, run ``after_s``, exit; the restart decision (and wait out its delay)."""
    policy.started()
    clock.now += after_s
    restart = policy.exited()
    clock.now += restart.delay_s
    return restart


def test_delays_double_up_to_the_ceiling() -> None:
    clock = Clock()
    policy = Backoff(initial_s=0.5, factor=2.0, max_s=4.0, loop_restarts=100, clock=clock)
    delays = [crash(policy, clock).delay_s for _ in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert not policy.crash_loop_


def test_a_component_that_ran_long_enough_starts_over() -> None:
    clock = Clock()
    policy = Backoff(initial_s=0.5, max_s=30.0, reset_after_s=10.0, loop_restarts=100, clock=clock)
    assert [crash(policy, clock).delay_s for _ in range(3)] == [0.5, 1.0, 2.0]
    # A run shorter than reset_after_s keeps the backoff growing...
    assert crash(policy, clock, after_s=9.0).delay_s == 4.0
    # ...one that long resets it, even if it is only noticed at its exit.
    assert crash(policy, clock, after_s=10.0).delay_s == 0.5
    assert crash(policy, clock).delay_s == 1.0


def test_a_crash_loop_is_named_and_retried_at_the_ceiling() -> None:
    clock = Clock()
    policy = Backoff(initial_s=0.5, max_s=30.0, loop_restarts=3, loop_window_s=60.0, clock=clock)
    first, second, third, fourth = (crash(policy, clock) for _ in range(4))
    assert [r.crash_loop for r in (first, second, third, fourth)] == [False, False, True, True]
    assert (third.crashes, third.delay_s) == (3, 30.0)
    assert fourth.delay_s == 30.0 and policy.crash_loop_


def test_exits_spread_wider_than_the_window_are_no_loop() -> None:
    clock = Clock()
    policy = Backoff(
        initial_s=0.5,
        max_s=30.0,
        reset_after_s=1000.0,
        loop_restarts=3,
        loop_window_s=60.0,
        clock=clock,
    )
    for _ in range(6):
        restart = crash(policy, clock, after_s=40.0)  # one exit every 40 s and more
        assert restart.crashes <= 2 and not restart.crash_loop


def test_settling_ends_a_crash_loop_while_the_component_runs() -> None:
    clock = Clock()
    policy = Backoff(loop_restarts=2, reset_after_s=30.0, clock=clock)
    crash(policy, clock)
    crash(policy, clock)
    assert policy.crash_loop_
    policy.started()
    clock.now += 29.0
    assert not policy.settle() and policy.crash_loop_
    clock.now += 1.0
    assert policy.settle() and not policy.crash_loop_
    assert not policy.settle()  # once
    clock.now += 1.0
    assert policy.exited() == (0.5, 1, False)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"initial_s": 0}, id="initial-zero"),
        pytest.param({"initial_s": 5, "max_s": 1}, id="initial-above-max"),
        pytest.param({"factor": 0.5}, id="shrinking"),
        pytest.param({"loop_restarts": 0}, id="no-loop-count"),
        pytest.param({"loop_window_s": 0}, id="no-window"),
        pytest.param({"reset_after_s": -1}, id="negative-reset"),
    ],
)
def test_bad_settings_are_refused(options: dict) -> None:
    with pytest.raises(ValidationError, match="backoff"):
        Backoff(**options)
