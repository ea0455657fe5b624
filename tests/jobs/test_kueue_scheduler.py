"""Scheduling cycles ported from Kueue's ``pkg/scheduler/scheduler_test.go`` (TestSchedule):
same queues, quotas and workloads, same expected admissions and messages.

Kueue's pod set in these cases is sometimes named ``one``; Keel's workloads have a single
pod set, ``main``, so messages say ``pod set main``. Kueue requests ``n`` pods of 1 cpu where
we request ``n`` cpu.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from keel.jobs.admission import Admission, Scheduler, Workload
from keel.jobs.spec import JobsConfig

# Resource names that are not Python identifiers, as keyword arguments.
NAMES = {"example_com_gpu": "example.com/gpu", "nvidia_com_gpu": "nvidia.com/gpu"}


def flavor(name: str, **quotas: Any) -> dict:
    """Kueue's MakeFlavorQuotas(name).Resource(r, nominal, borrowingLimit, lendingLimit):
    a quota is a nominal, or a (nominal, borrowing_limit, lending_limit) tuple, None unset."""
    resources = {}
    for resource, q in quotas.items():
        nominal, borrowing, lending = (
            (*q, None, None)[:3] if isinstance(q, tuple) else (q, None, None)
        )
        quota = {"nominal": nominal}
        if borrowing is not None:
            quota["borrowing_limit"] = borrowing
        if lending is not None:
            quota["lending_limit"] = lending
        resources[NAMES.get(resource, resource)] = quota
    return {"name": name, "resources": resources}


def group(*flavors: dict) -> dict:
    return {"covered": list(flavors[0]["resources"]), "flavors": list(flavors)}


def config(*queues: dict, fair_sharing: bool = False) -> JobsConfig:
    names = sorted({f["name"] for q in queues for g in q["resource_groups"] for f in g["flavors"]})
    return msgspec.convert(
        {
            "flavors": [{"name": n} for n in names],
            "cluster_queues": list(queues),
            "local_queues": [{"name": q["name"], "cluster_queue": q["name"]} for q in queues],
            "fair_sharing": fair_sharing,
        },
        JobsConfig,
    )


# TestSchedule's cluster queues (the ones these cases use).
SALES = {
    "name": "sales",
    "queueing_strategy": "StrictFIFO",
    "resource_groups": [group(flavor("default", cpu=(50, 0)))],
}
ENG_ALPHA = {
    "name": "eng-alpha",
    "cohort": "eng",
    "queueing_strategy": "StrictFIFO",
    "resource_groups": [group(flavor("on-demand", cpu=(50, 50)), flavor("spot", cpu=(100, 0)))],
}
ENG_BETA = {
    "name": "eng-beta",
    "cohort": "eng",
    "queueing_strategy": "StrictFIFO",
    "preemption": {"reclaim_within_cohort": "Any", "within_cluster_queue": "LowerPriority"},
    "resource_groups": [
        group(flavor("on-demand", cpu=(50, 10)), flavor("spot", cpu=(0, 100))),
        group(flavor("model-a", example_com_gpu=(20, 0))),
    ],
}
LEND_A = {
    "name": "lend-a",
    "cohort": "lend",
    "resource_groups": [group(flavor("default", cpu=(3, None, 2)))],
}
LEND_B = {
    "name": "lend-b",
    "cohort": "lend",
    "resource_groups": [group(flavor("default", cpu=(2, None, 2)))],
}


def scheduler() -> Scheduler:
    return Scheduler(config(SALES, ENG_ALPHA, ENG_BETA, LEND_A, LEND_B))


def submit(s: Scheduler, id: str, queue: str, created: float = 0.0, priority: int = 0, **req):
    s.submit(Workload(id, queue, priority, {NAMES.get(k, k): v for k, v in req.items()}, created))


def restore(
    s: Scheduler, id: str, queue: str, flavor: str, priority: int = 0, at: float = 0.0, **req
):
    requests = {NAMES.get(k, k): v for k, v in req.items()}
    admission = Admission(queue, dict.fromkeys(requests, flavor), at)
    s.restore(Workload(id, queue, priority, requests, created=at, admission=admission))


def test_cannot_borrow_if_cohort_was_assigned_and_would_result_in_overadmission():
    # Kueue: "cannot borrow if cohort was assigned and would result in overadmission".
    # eng-alpha's 45 fits without borrowing and goes first; eng-beta's 56 fitted at
    # nomination by borrowing 6, but after the 45 the cohort has only 55 left.
    s = scheduler()
    submit(s, "alpha-new", "eng-alpha", cpu=45)
    submit(s, "beta-new", "eng-beta", cpu=56)
    result = s.cycle(now=1.0)
    assert [w.id for w in result.admitted] == ["alpha-new"]
    assert result.admitted[0].admission == Admission("eng-alpha", {"cpu": "on-demand"}, 1.0)
    assert result.pending == {
        "beta-new": "Workload no longer fits after processing another workload"
    }


def test_can_borrow_if_cohort_was_assigned_and_will_not_result_in_overadmission():
    # Kueue: "can borrow if cohort was assigned and will not result in overadmission".
    s = scheduler()
    submit(s, "alpha-new", "eng-alpha", cpu=45)
    submit(s, "beta-new", "eng-beta", cpu=55)
    result = s.cycle(now=1.0)
    assert {w.id: w.admission.flavors for w in result.admitted} == {
        "alpha-new": {"cpu": "on-demand"},
        "beta-new": {"cpu": "on-demand"},
    }
    assert result.pending == {}
    beta = {(q.name, r.flavor): r for q in s.usage() for r in q.resources}[
        ("eng-beta", "on-demand")
    ]
    assert (beta.used, beta.borrowed) == (55, 5)


def test_workload_exceeds_lending_limit_when_borrow_in_cohort():
    # Kueue: "workload exceeds lending limit when borrow in cohort". lend-b (nominal 2, lends
    # 2) already uses 2; the cohort pools 2 + 2, so a 3-cpu workload is 1 short, and as it
    # asks for more than lend-b's nominal quota it cannot preempt its way in either.
    s = scheduler()
    restore(s, "a", "lend-b", "default", cpu=2)
    submit(s, "b", "lend-b", cpu=3)
    result = s.cycle(now=1.0)
    assert result.admitted == []
    assert result.pending["b"] == (
        "couldn't assign flavors to pod set main: "
        "insufficient unused quota for cpu in flavor default, 1 more needed"
    )


def test_single_cluster_queue_full():
    # Kueue: "single clusterQueue full".
    s = scheduler()
    restore(s, "assigned", "sales", "default", cpu=40)
    submit(s, "new", "sales", cpu=11)
    assert s.cycle(now=1.0).pending["new"] == (
        "couldn't assign flavors to pod set main: "
        "insufficient unused quota for cpu in flavor default, 1 more needed"
    )


def test_not_enough_resources():
    # Kueue: "not enough resources": 100 cpu against a queue of 50 can never be admitted.
    s = scheduler()
    submit(s, "new", "sales", cpu=100)
    for now in (1.0, 2.0):
        result = s.cycle(now=now)
        assert result.admitted == []
    assert s.reason("new") == (
        "couldn't assign flavors to pod set main: "
        "insufficient quota for cpu in flavor default, request > maximum capacity (100 > 50)"
    )


def test_cannot_borrow_resource_not_listed_in_cluster_queue():
    # Kueue: "cannot borrow resource not listed in clusterQueue": eng-beta has the gpu,
    # eng-alpha does not cover it at all.
    s = scheduler()
    submit(s, "new", "eng-alpha", example_com_gpu=1)
    result = s.cycle(now=1.0)
    assert result.admitted == []
    assert result.pending["new"] == (
        "couldn't assign flavors to pod set main: resource example.com/gpu unavailable in "
        "ClusterQueue"
    )


def test_not_enough_resources_to_borrow_fallback_to_next_flavor():
    # Kueue: "not enough resources to borrow, fallback to next flavor; WhenCanPreempt:
    # TryNextFlavor": on-demand has 55 left in the cohort, so the 60 goes to spot.
    s = scheduler()
    restore(s, "existing", "eng-beta", "on-demand", cpu=45)
    submit(s, "new", "eng-alpha", cpu=60)
    result = s.cycle(now=1.0)
    assert [(w.id, w.admission.flavors) for w in result.admitted] == [("new", {"cpu": "spot"})]


def test_admit_in_same_cohort_with_no_borrowing():
    # Kueue: "admit in same cohort with no borrowing": both take the first flavor.
    s = scheduler()
    submit(s, "alpha-new", "eng-alpha", cpu=40)
    submit(s, "beta-new", "eng-beta", cpu=40)
    admitted = s.cycle(now=1.0).admitted
    assert {w.id: w.admission.flavors["cpu"] for w in admitted} == {
        "alpha-new": "on-demand",
        "beta-new": "on-demand",
    }


def test_first_flavor_that_fits_is_taken():
    # Flavor fungibility: flavors are tried in the resource group's order.
    s = scheduler()
    submit(s, "small", "eng-alpha", cpu=10)
    assert s.cycle(now=1.0).admitted[0].admission.flavors == {"cpu": "on-demand"}


def test_try_next_flavor_before_borrowing():
    # Kueue's FlavorFungibility whenCanBorrow=TryNextFlavor: a flavor that only fits by
    # borrowing is passed over for one that fits within nominal quota.
    queues = []
    for policy in ("Borrow", "TryNextFlavor"):
        q = dict(
            ENG_ALPHA,
            name=f"alpha-{policy}",
            cohort=f"c-{policy}",
            queueing_strategy="BestEffortFIFO",
        )
        q["flavor_fungibility"] = {"when_can_borrow": policy}
        other = dict(ENG_BETA, name=f"beta-{policy}", cohort=f"c-{policy}")
        queues += [q, other]
    s = Scheduler(config(*queues))
    for policy in ("Borrow", "TryNextFlavor"):
        submit(s, f"wl-{policy}", f"alpha-{policy}", cpu=70)
    flavors = {w.id: w.admission.flavors["cpu"] for w in s.cycle(now=1.0).admitted}
    assert flavors == {"wl-Borrow": "on-demand", "wl-TryNextFlavor": "spot"}


@pytest.mark.parametrize(
    ("strategy", "second_cycle"),
    [
        pytest.param("StrictFIFO", [], id="StrictFIFO-head-blocks"),
        pytest.param("BestEffortFIFO", ["small"], id="BestEffortFIFO-skips"),
    ],
)
def test_queueing_strategy(strategy, second_cycle):
    # Kueue's ClusterQueue queueingStrategy (pkg/cache/queue/cluster_queue.go): a StrictFIFO
    # head that does not fit keeps the queue waiting; BestEffortFIFO sets it aside as
    # inadmissible so the next workload gets its turn.
    q = {
        "name": "q",
        "queueing_strategy": strategy,
        "resource_groups": [group(flavor("default", cpu=4))],
    }
    s = Scheduler(config(q))
    restore(s, "running", "q", "default", cpu=3)
    submit(s, "big", "q", created=1.0, priority=5, cpu=2)
    submit(s, "small", "q", created=2.0, cpu=1)
    assert s.cycle(now=1.0).admitted == []
    assert [w.id for w in s.cycle(now=2.0).admitted] == second_cycle
    assert "1 more needed" in s.reason("big")


def test_inadmissible_workload_gets_another_chance_when_quota_is_freed():
    q = {"name": "q", "resource_groups": [group(flavor("default", cpu=4))]}
    s = Scheduler(config(q))
    restore(s, "running", "q", "default", cpu=3)
    submit(s, "big", "q", cpu=2)
    s.cycle(now=1.0)
    assert s.cycle(now=2.0).admitted == []  # set aside, nothing changed
    s.release("running")
    assert [w.id for w in s.cycle(now=3.0).admitted] == ["big"]


def test_heads_are_ordered_non_borrowing_first_then_priority():
    # Kueue's classical iterator: entries within nominal quota before those that borrow,
    # then higher priority, then older: eng-beta's head borrows, so it comes second despite
    # its priority.
    s = scheduler()
    submit(s, "beta", "eng-beta", priority=10, cpu=60)
    submit(s, "alpha", "eng-alpha", priority=0, cpu=40)
    assert [w.id for w in s.cycle(now=1.0).admitted] == ["alpha", "beta"]
