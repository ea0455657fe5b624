"""The admission engine's own contract: submitting, restoring after a restart, releasing and
requeueing, quota limits, usage reports and refusals."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keel.errors import NotFoundError, ValidationError
from keel.jobs.admission import Admission, Scheduler, Workload
from keel.jobs.spec import JobsConfig


def cpu_queue(name: str, nominal: float, cohort: str = "", **limits) -> dict:
    flavor = {"name": "default", "resources": {"cpu": {"nominal": nominal, **limits}}}
    return {
        "name": name,
        "cohort": cohort,
        "resource_groups": [{"covered": ["cpu"], "flavors": [flavor]}],
    }


def scheduler(*queues: dict) -> Scheduler:
    return Scheduler(
        msgspec.convert(
            {
                "flavors": [{"name": "default"}],
                "cluster_queues": list(queues),
                "local_queues": [{"name": q["name"], "cluster_queue": q["name"]} for q in queues],
            },
            JobsConfig,
        )
    )


def wl(id: str, queue: str, cpu: float, created: float = 0.0, priority: int = 0) -> Workload:
    return Workload(id, queue, priority, {"cpu": cpu}, created)


def run(s: Scheduler, cycles: int = 5, start: float = 0.0) -> list[str]:
    """Admitted ids over a few cycles (one head per queue and cycle)."""
    return [w.id for i in range(cycles) for w in s.cycle(now=start + i).admitted]


def rows(s: Scheduler) -> dict[str, tuple[float, float, float]]:
    """(used, borrowed, lent) of each queue's default cpu."""
    return {
        q.name: (q.resources[0].used, q.resources[0].borrowed, q.resources[0].lent)
        for q in s.usage()
    }


def test_borrowing_limit_caps_usage_at_nominal_plus_limit():
    # nominal 9 with borrowing_limit 1: at most 10, though the cohort has more to lend.
    s = scheduler(cpu_queue("a", 9, "all", borrowing_limit=1), cpu_queue("b", 12, "all"))
    for i in range(11):
        s.submit(wl(f"a{i}", "a", 1, created=i))
    assert len(run(s, cycles=12)) == 10
    assert rows(s)["a"] == (10, 1, 0)
    assert rows(s)["b"] == (0, 0, 1)
    assert "1 more needed" in s.reason("a10")
    s.submit(wl("huge", "a", 11, created=-1))
    run(s, cycles=1, start=20)
    assert s.reason("huge").endswith("request > maximum capacity (11 > 10)")


def test_lending_limit_keeps_the_rest_for_the_lender():
    # nominal 12 with lending_limit 1: others can use 1 of it, the lender keeps 11.
    s = scheduler(cpu_queue("lender", 12, "all", lending_limit=1), cpu_queue("borrower", 0, "all"))
    for i in range(3):
        s.submit(wl(f"b{i}", "borrower", 1, created=i))
    assert run(s) == ["b0"]
    assert "1 more needed" in s.reason("b1")
    s.submit(wl("mine", "lender", 11))
    assert run(s, cycles=1, start=10) == ["mine"]
    assert rows(s) == {"lender": (11, 0, 1), "borrower": (1, 1, 0)}
    s.submit(wl("one-more", "lender", 1))
    run(s, cycles=1, start=20)
    assert "1 more needed" in s.reason("one-more")


def test_unknown_queue_is_refused_with_a_suggestion():
    s = scheduler(cpu_queue("training", 4))
    with pytest.raises(ValidationError, match=r"unknown queue 'trainng' — did you mean 'training'"):
        s.submit(wl("x", "trainng", 1))


def test_duplicate_id_is_refused():
    s = scheduler(cpu_queue("q", 4))
    s.submit(wl("x", "q", 1))
    with pytest.raises(ValidationError, match="'x' is already known"):
        s.submit(wl("x", "q", 1))


@pytest.mark.parametrize("amount", [-1, float("nan"), float("inf"), "2"])
def test_bad_request_is_refused(amount):
    s = scheduler(cpu_queue("q", 4))
    with pytest.raises(ValidationError, match="request 'cpu'"):
        s.submit(Workload("x", "q", 0, {"cpu": amount}, 0.0))


def test_submit_refuses_an_admitted_workload_and_restore_a_pending_one():
    s = scheduler(cpu_queue("q", 4))
    admitted = Workload(
        "a", "q", 0, {"cpu": 1}, 0.0, admission=Admission("q", {"cpu": "default"}, 0)
    )
    with pytest.raises(ValidationError, match="give it to restore"):
        s.submit(admitted)
    with pytest.raises(ValidationError, match="give it to submit"):
        s.restore(wl("p", "q", 1))


@pytest.mark.parametrize(
    ("admission", "match"),
    [
        pytest.param(Admission("other", {"cpu": "default"}, 0), "feeds 'q'", id="wrong-queue"),
        pytest.param(Admission("q", {"cpu": "spot"}, 0), "no quota for", id="unknown-flavor"),
        pytest.param(Admission("q", {}, 0), "no quota for", id="missing-flavor"),
    ],
)
def test_restore_checks_the_admission(admission, match):
    s = scheduler(cpu_queue("q", 4), cpu_queue("other", 4))
    with pytest.raises(ValidationError, match=match):
        s.restore(Workload("a", "q", 0, {"cpu": 1}, 0.0, admission=admission))


def test_restore_after_a_restart_gives_the_same_usage():
    queues = (cpu_queue("a", 4, "all"), cpu_queue("b", 4, "all"))
    before = scheduler(*queues)
    for i, (q, cpu) in enumerate([("a", 3), ("a", 3), ("b", 1), ("b", 2)]):
        before.submit(wl(f"w{i}", q, cpu, created=i))
    run(before)
    after = scheduler(*queues)
    for w in before.admitted():
        after.restore(Workload(w.id, w.queue, w.priority, dict(w.requests), w.created, w.admission))
    for w in before.pending():
        after.submit(Workload(w.id, w.queue, w.priority, dict(w.requests), w.created))
    assert after.usage() == before.usage()
    assert {w.id for w in after.admitted()} == {w.id for w in before.admitted()}


def test_release_frees_quota_and_forgets():
    s = scheduler(cpu_queue("q", 4))
    s.submit(wl("a", "q", 4, created=0))
    s.submit(wl("b", "q", 4, created=1))
    assert run(s) == ["a"]
    assert s.release("a").id == "a"
    assert run(s, start=10) == ["b"]
    with pytest.raises(NotFoundError, match="no workload 'a'"):
        s.release("a")


def test_releasing_a_pending_workload_takes_it_off_the_queue():
    s = scheduler(cpu_queue("q", 4))
    s.submit(wl("a", "q", 1, created=0))
    s.release("a")
    assert run(s) == []
    assert s.cycle(now=9).pending == {}


def test_requeue_frees_quota_and_keeps_created_order():
    s = scheduler(cpu_queue("q", 4))
    s.submit(wl("first", "q", 4, created=0))
    assert run(s, cycles=1) == ["first"]
    s.submit(wl("second", "q", 4, created=5))
    s.requeue("first")
    assert s.get("first").admission is None
    assert s.usage()[0].pending == 2
    # The requeued workload was created first, so it is the head again.
    assert run(s, cycles=1, start=10) == ["first"]
    with pytest.raises(ValidationError, match="not admitted"):
        s.requeue("second")


def test_pending_reasons_and_counts():
    s = scheduler(cpu_queue("q", 2))
    s.submit(wl("fits", "q", 2, created=0))
    s.submit(wl("waits", "q", 1, created=1))
    result = s.cycle(now=0)
    assert set(result.pending) == {"waits"}
    assert s.reason("fits") is None
    usage = s.usage()[0]
    assert (usage.pending, usage.admitted) == (1, 1)


def test_zero_requests_are_dropped_and_an_empty_workload_fits():
    s = scheduler(cpu_queue("q", 0))
    s.submit(Workload("nothing", "q", 0, {"cpu": 0}, 0.0))
    assert run(s, cycles=1) == ["nothing"]
    assert s.get("nothing").admission.flavors == {}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(1, 8), st.integers(-2, 2)),
        min_size=1,
        max_size=25,
    ),
    st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_usage_never_exceeds_what_the_cohort_has(jobs, finish):
    # However jobs arrive and finish, no queue goes past nominal + borrowing limit and the
    # cohort never hands out more than its members lend.
    s = scheduler(
        cpu_queue("a", 4, "all", borrowing_limit=2),
        cpu_queue("b", 6, "all", lending_limit=3),
        cpu_queue("c", 2, "all"),
    )
    for i, (q, cpu, prio) in enumerate(jobs):
        s.submit(wl(f"j{i}", q, cpu, created=i, priority=prio))
    for step, done in enumerate(finish):
        s.cycle(now=step)
        running = s.admitted()
        if done and running:
            s.release(running[0].id)
        used = rows(s)
        assert used["a"][0] <= 6
        assert used["a"][0] + used["c"][0] + max(0, used["b"][0] - 3) <= 4 + 3 + 2
