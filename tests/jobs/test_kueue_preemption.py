"""Preemption ported from Kueue's ``pkg/scheduler/preemption/preemption_test.go``
(TestPreemption) and ``preemption_fair_test.go`` (TestFairPreemptions): same cluster queues,
admitted workloads and incoming workload, same victims. Kueue's tests call the preemptor
directly; here the incoming workload goes through a scheduling cycle, which reaches the same
preemptor.
"""

from __future__ import annotations

import msgspec
import pytest

from keel.jobs.admission import Admission, Eviction, Scheduler, Workload
from keel.jobs.spec import JobsConfig


def cpu_queue(name: str, nominal: float, borrowing=None, lending=None, **extra) -> dict:
    quota = {"nominal": nominal}
    if borrowing is not None:
        quota["borrowing_limit"] = borrowing
    if lending is not None:
        quota["lending_limit"] = lending
    flavor = {"name": "default", "resources": {"cpu": quota}}
    return {"name": name, "resource_groups": [{"covered": ["cpu"], "flavors": [flavor]}], **extra}


def config(*queues: dict, fair_sharing: bool = False) -> JobsConfig:
    return msgspec.convert(
        {
            "flavors": [{"name": "default"}, {"name": "alpha"}, {"name": "beta"}],
            "cluster_queues": list(queues),
            "local_queues": [{"name": q["name"], "cluster_queue": q["name"]} for q in queues],
            "fair_sharing": fair_sharing,
        },
        JobsConfig,
    )


def policy(within: str = "Never", reclaim: str = "Never") -> dict:
    return {"preemption": {"within_cluster_queue": within, "reclaim_within_cohort": reclaim}}


# TestPreemption's defaultClusterQueues (those these cases use).
STANDALONE = cpu_queue("standalone", 6, **policy("LowerPriority"))
STANDALONE["resource_groups"].append(
    {
        "covered": ["memory"],
        "flavors": [
            {"name": "alpha", "resources": {"memory": {"nominal": "3Gi"}}},
            {"name": "beta", "resources": {"memory": {"nominal": "3Gi"}}},
        ],
    }
)
C1 = cpu_queue("c1", 6, 6, cohort="cohort", **policy("LowerPriority", "LowerPriority"))
C2 = cpu_queue("c2", 6, 6, cohort="cohort", **policy("Never", "Any"))
PREVENT_STARVATION = cpu_queue("preventStarvation", 6, **policy("LowerOrNewerEqualPriority"))


def scheduler(fair_sharing: bool = False) -> Scheduler:
    return Scheduler(config(STANDALONE, C1, C2, PREVENT_STARVATION, fair_sharing=fair_sharing))


def admitted(
    s: Scheduler,
    id: str,
    cq: str,
    cpu: float,
    priority: int = 0,
    at: float = 0.0,
    created: float = 0.0,
):
    """Kueue's ReserveQuotaAt(MakeAdmission(cq)..., at)."""
    admission = Admission(cq, {"cpu": "default"}, at)
    s.restore(Workload(id, cq, priority, {"cpu": cpu}, created, admission=admission))


def incoming(
    s: Scheduler, cq: str, cpu: float, priority: int = 0, created: float = 100.0
) -> list[Eviction]:
    s.submit(Workload("in", cq, priority, {"cpu": cpu}, created))
    result = s.cycle(now=200.0)
    assert result.admitted == []
    return result.evictions


def test_preempt_lowest_priority():
    # Kueue: "preempt lowest priority". Of low (-1), mid (0) and high (1), a priority-1
    # workload needing 2 cpu evicts low only.
    s = scheduler()
    admitted(s, "low", "standalone", 2, priority=-1)
    admitted(s, "mid", "standalone", 2, priority=0)
    admitted(s, "high", "standalone", 2, priority=1)
    assert incoming(s, "standalone", 2, priority=1) == [Eviction("low", "in", "InClusterQueue")]
    assert s.reason("in") == (
        "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor "
        "default, 2 more needed. Pending the preemption of 1 workload(s)"
    )


def test_preempt_multiple():
    # Kueue: "preempt multiple": 3 cpu needs both lower-priority workloads gone.
    s = scheduler()
    admitted(s, "low", "standalone", 2, priority=-1)
    admitted(s, "mid", "standalone", 2, priority=0)
    admitted(s, "high", "standalone", 2, priority=1)
    victims = {e.victim for e in incoming(s, "standalone", 3, priority=1)}
    assert victims == {"low", "mid"}


def test_minimal_set_excludes_low_priority():
    # Kueue: "minimal set excludes low priority": removing low (1 cpu) then mid (2 cpu)
    # makes room, but mid alone is enough, so low is added back.
    s = scheduler()
    admitted(s, "low", "standalone", 1, priority=-1)
    admitted(s, "mid", "standalone", 2, priority=0)
    admitted(s, "high", "standalone", 3, priority=1)
    assert incoming(s, "standalone", 2, priority=1) == [Eviction("mid", "in", "InClusterQueue")]


def test_reclaim_quota_from_borrower():
    # Kueue: "reclaim quota from borrower". c2 borrows 3 of c1's quota; c1's priority-1
    # workload reclaims it from c2-mid (priority 0), not from c2-high (1) nor its own c1-low.
    s = scheduler()
    admitted(s, "c1-low", "c1", 3, priority=-1)
    admitted(s, "c2-mid", "c2", 3, priority=0)
    admitted(s, "c2-high", "c2", 6, priority=1)
    assert incoming(s, "c1", 3, priority=1) == [Eviction("c2-mid", "in", "InCohortReclamation")]


@pytest.mark.parametrize(
    ("case", "want"),
    [
        # Kueue: "do not reclaim borrowed quota from same priority for
        # withinCohort=ReclaimFromLowerPriority".
        pytest.param("c1", [], id="LowerPriority-equal-priority-evicts-nothing"),
        # Kueue: "reclaim borrowed quota from same priority for withinCohort=ReclaimFromAny".
        pytest.param("c2", [Eviction("c1-1", "in", "InCohortReclamation")], id="Any-evicts"),
    ],
)
def test_reclaim_within_cohort_policy(case, want):
    s = scheduler()
    if case == "c1":
        admitted(s, "c1", "c1", 2)
        admitted(s, "c2-1", "c2", 4)
        admitted(s, "c2-2", "c2", 4)
    else:
        admitted(s, "c1-1", "c1", 4)
        admitted(s, "c1-2", "c1", 4, priority=1)
        admitted(s, "c2", "c2", 2)
    assert incoming(s, case, 4) == want
    assert "2 more needed" in s.reason("in")


def test_preempt_newer_workloads_with_the_same_priority():
    # Kueue: "preempt newer workloads with the same priority": LowerOrNewerEqualPriority
    # takes the most recently admitted of the equal-priority workloads created after it.
    s = scheduler()
    admitted(s, "wl1", "preventStarvation", 2, priority=2, at=0.0)
    admitted(s, "wl2", "preventStarvation", 2, priority=1, at=1.0)
    admitted(s, "wl3", "preventStarvation", 2, priority=1, at=0.0)
    evictions = incoming(s, "preventStarvation", 2, priority=1, created=-15.0)
    assert evictions == [Eviction("wl2", "in", "InClusterQueue")]


def test_preemptor_waits_for_its_victims_then_is_admitted():
    s = scheduler()
    admitted(s, "low", "standalone", 6, priority=-1)
    assert incoming(s, "standalone", 2, priority=1) == [Eviction("low", "in", "InClusterQueue")]
    assert s.get("low").evicting
    # The victim holds its quota until released, and is not evicted a second time.
    again = s.cycle(now=201.0)
    assert (again.admitted, again.evictions) == ([], [])
    assert "Pending the preemption of 1 workload(s)" in again.pending["in"]
    s.requeue("low")
    result = s.cycle(now=202.0)
    assert [w.id for w in result.admitted] == ["in"]
    assert s.get("low").admission is None and not s.get("low").evicting


def test_preemption_targets_do_not_overlap_within_a_cycle():
    # Kueue's scheduler skips an entry whose targets another entry of the cycle claimed:
    # x's head preempts within x, y's head reclaims from x, and both need x's borrower gone.
    x = cpu_queue("x", 6, cohort="xy", **policy("LowerPriority", "LowerPriority"))
    y = cpu_queue("y", 6, cohort="xy", **policy("Never", "LowerPriority"))
    s = Scheduler(config(x, y))
    admitted(s, "borrower", "x", 12, priority=-5)
    s.submit(Workload("in-x", "x", 1, {"cpu": 6}, 1.0))
    s.submit(Workload("in-y", "y", 1, {"cpu": 6}, 2.0))
    result = s.cycle(now=10.0)
    assert result.evictions == [Eviction("borrower", "in-x", "InClusterQueue")]
    assert result.pending["in-y"] == (
        "Workload has overlapping preemption targets with another workload"
    )


def test_no_preemption_when_even_every_candidate_is_not_enough():
    # Kueue: "not enough low priority workloads".
    s = scheduler()
    admitted(s, "low", "standalone", 2, priority=-1)
    admitted(s, "high", "standalone", 4, priority=5)
    assert incoming(s, "standalone", 4, priority=1) == []
    assert "4 more needed" in s.reason("in")


# TestFairPreemptions: three queues of 3 cpu in cohort "all".
FAIR_QUEUES = [
    cpu_queue(n, 3, cohort="all", **policy("LowerPriority", "Any")) for n in ("a", "b", "c")
]


def fair_scheduler(usage: dict[str, int]) -> Scheduler:
    s = Scheduler(config(*FAIR_QUEUES, fair_sharing=True))
    for cq, n in usage.items():
        for i in range(1, n + 1):
            admitted(s, f"{cq}{i}", cq, 1)
    return s


def test_fair_reclaim_nominal_from_user_using_the_most():
    # Kueue: "reclaim nominal from user using the most": usage 3/5/1, one more in c.
    s = fair_scheduler({"a": 3, "b": 5, "c": 1})
    assert incoming(s, "c", 1) == [Eviction("b1", "in", "InCohortReclamation")]


def test_fair_cant_preempt_when_everyone_under_nominal():
    # Kueue: "can't preempt when everyone under nominal": 3/3/3.
    s = fair_scheduler({"a": 3, "b": 3, "c": 3})
    assert incoming(s, "c", 1) == []


def test_fair_cant_preempt_when_it_would_switch_the_imbalance():
    # Kueue: "can't preempt when it would switch the imbalance": 3/5, two more in a would
    # leave a borrowing more than b after the eviction.
    s = fair_scheduler({"a": 3, "b": 5})
    assert incoming(s, "a", 2) == []


def test_fair_reclaim_borrowable_quota_from_user_using_the_most():
    # Kueue: "reclaim borrowable quota from user using the most": a is at nominal, so its
    # one more borrows; b borrows more, and evicting one of b's keeps a's share <= b's.
    s = fair_scheduler({"a": 3, "b": 5, "c": 1})
    assert incoming(s, "a", 1) == [Eviction("b1", "in", "InCohortFairSharing")]
