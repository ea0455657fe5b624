"""How a pending workload can get its quota: which flavor of each resource (Kueue's
``flavorassigner``, which asks preemption whether evicting would make room), and whom to
evict (Kueue's ``pkg/scheduler/preemption``: the classical heuristic and, with fair sharing,
the dominant-resource-share strategies).

Candidates are admitted workloads the cluster queue's policy lets the preemptor evict: in its
own queue per ``within_cluster_queue``, and in the cohort's other queues that are borrowing per
``reclaim_within_cohort``. They are tried in Kueue's order (already evicting first, other
queues first, lower priority first, most recently admitted first); removed one by one until the
preemptor fits; then each is added back, last removed first, if the preemptor still fits
without evicting it.

Example
-------
>>> from types import SimpleNamespace as NS
>>> from keel.jobs.spec import (ClusterQueue, FlavorQuotas, PreemptionPolicy, Quota,
...                             ResourceGroup)
>>> cq = ClusterQueue(name="q", preemption=PreemptionPolicy(within_cluster_queue="LowerPriority"),
...     resource_groups=[ResourceGroup(covered=["cpu"], flavors=[
...         FlavorQuotas(name="default", resources={"cpu": Quota(nominal=4)})])])
>>> ledger = Ledger([cq])
>>> fr = ("default", "cpu")
>>> running = {"q": {}}
>>> for i, prio in enumerate([0, 5]):
...     wl = NS(id=f"w{i}", priority=prio, created=0.0, evicting=False, admission=NS(at=0.0))
...     running["q"][wl.id] = Running(wl, "q", {fr: 2000})
...     ledger.add("q", {fr: 2000})
>>> incoming = NS(id="new", priority=3, created=1.0, evicting=False, admission=None)
>>> Preemptor(ledger, {"q": cq}, running).targets(incoming, "q", {fr: 2000}, {fr})
[Target(id='w0', cluster_queue='q', reason='InClusterQueue')]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from keel.jobs.fairshare import DRS, FlavorResource, Ledger, compare_drs
from keel.jobs.spec import ClusterQueue, FlavorFungibility

__all__ = [
    "FIT",
    "IN_CLUSTER_QUEUE",
    "IN_COHORT_FAIR_SHARING",
    "IN_COHORT_RECLAMATION",
    "NO_FIT",
    "PREEMPT",
    "Assignment",
    "FlavorAssigner",
    "Preemptor",
    "Running",
    "Target",
]

IN_CLUSTER_QUEUE = "InClusterQueue"
IN_COHORT_RECLAMATION = "InCohortReclamation"
IN_COHORT_FAIR_SHARING = "InCohortFairSharing"


class _Job(Protocol):
    id: str
    priority: int
    created: float
    evicting: bool
    admission: Any


@dataclass(slots=True)
class Running:
    """An admitted workload as preemption sees it: its queue and its (flavor, resource)
    usage in thousandths."""

    wl: _Job
    cluster_queue: str
    usage: dict[FlavorResource, int]


@dataclass(frozen=True, slots=True)
class Target:
    """A workload to evict, and Kueue's reason for it."""

    id: str
    cluster_queue: str
    reason: str


class Preemptor:
    """Finds preemption targets against the ledger's current usage; the ledger is left as
    it was found."""

    def __init__(
        self,
        ledger: Ledger,
        queues: Mapping[str, ClusterQueue],
        running: Mapping[str, Mapping[str, Running]],
        fair_sharing: bool = False,
    ) -> None:
        self.ledger = ledger
        self.queues = queues
        self.running = running
        self.fair_sharing = fair_sharing

    def targets(
        self,
        wl: _Job,
        cq: str,
        usage: Mapping[FlavorResource, int],
        need: set[FlavorResource],
    ) -> list[Target]:
        """Whom to evict so that ``usage`` fits in ``cq``; empty when no set of candidates
        allowed by the policies would make it fit. ``need`` are the (flavor, resource) pairs
        short of quota."""
        candidates = self._candidates(wl, cq, need)
        if not candidates:
            return []
        if self.fair_sharing:
            return self._fair(cq, usage, need, candidates)
        same = [c for c in candidates if c.cluster_queue == cq]
        if len(same) == len(candidates):
            return self._minimal(cq, usage, need, candidates, borrowing=True)
        # Reclaiming from other queues is only tried while this one stays within its nominal
        # quota; otherwise only its own workloads may go, to avoid two queues evicting each
        # other's borrowed workloads back and forth.
        if all(self._strictly_under(cq, fr) for fr in need):
            found = self._minimal(cq, usage, need, candidates, borrowing=False)
            if found:
                return found
        return self._minimal(cq, usage, need, same, borrowing=True)

    def _strictly_under(self, cq: str, fr: FlavorResource) -> bool:
        return self.ledger.usage[cq][fr] < self.ledger.limits[cq][fr].nominal

    def _candidates(self, wl: _Job, cq: str, need: set[FlavorResource]) -> list[Running]:
        spec = self.queues[cq]
        found: list[Running] = []
        within = spec.preemption.within_cluster_queue
        if within != "Never":
            found += _eligible(wl, self.running[cq].values(), within, need)
        cohort = self.ledger.cohort_of.get(cq)
        reclaim = spec.preemption.reclaim_within_cohort
        if cohort is not None and reclaim != "Never":
            for other in self.ledger.members[cohort]:
                if other != cq and any(
                    fr in self.ledger.limits[other] and self.ledger.borrowing_with(other, fr)
                    for fr in need
                ):
                    found += _eligible(wl, self.running[other].values(), reclaim, need)
        found.sort(key=lambda r: _order(r, cq))
        return found

    def _fits(self, cq: str, usage: Mapping[FlavorResource, int], borrowing: bool) -> bool:
        ledger = self.ledger
        for fr, amount in usage.items():
            if not borrowing and ledger.borrowing_with(cq, fr, amount):
                return False
            if amount > ledger.available(cq, fr):
                return False
        return True

    def _minimal(
        self,
        cq: str,
        usage: Mapping[FlavorResource, int],
        need: set[FlavorResource],
        candidates: list[Running],
        borrowing: bool,
    ) -> list[Target]:
        removed: list[Running] = []
        fits = False
        for cand in candidates:
            same = cand.cluster_queue == cq
            # A queue stops being reclaimable once earlier removals brought it back to nominal.
            if not same and not any(
                fr in self.ledger.limits[cand.cluster_queue]
                and self.ledger.borrowing_with(cand.cluster_queue, fr)
                for fr in need
            ):
                continue
            self.ledger.remove(cand.cluster_queue, cand.usage)
            removed.append(cand)
            if self._fits(cq, usage, borrowing):
                fits = True
                break
        if fits:
            removed = self._fill_back(cq, usage, removed, borrowing)
        for cand in removed:
            self.ledger.add(cand.cluster_queue, cand.usage)
        if not fits:
            return []
        return [
            Target(
                c.wl.id,
                c.cluster_queue,
                IN_CLUSTER_QUEUE if c.cluster_queue == cq else IN_COHORT_RECLAMATION,
            )
            for c in removed
        ]

    def _fill_back(
        self,
        cq: str,
        usage: Mapping[FlavorResource, int],
        removed: list[Running],
        borrowing: bool,
    ) -> list[Running]:
        """Spare every removed workload, last removed first, that the preemptor does not
        need gone (the last one removed is always needed)."""
        kept = list(removed)
        for i in range(len(kept) - 2, -1, -1):
            cand = kept[i]
            self.ledger.add(cand.cluster_queue, cand.usage)
            if self._fits(cq, usage, borrowing):
                del kept[i]
            else:
                self.ledger.remove(cand.cluster_queue, cand.usage)
        return kept

    def _fair(
        self,
        cq: str,
        usage: Mapping[FlavorResource, int],
        need: set[FlavorResource],
        candidates: list[Running],
    ) -> list[Target]:
        ledger = self.ledger
        # Shares are compared as they would be once the preemptor is admitted.
        ledger.add(cq, usage)
        removed: list[Target] = []
        gone: list[Running] = []

        def take(cand: Running, reason: str) -> bool:
            ledger.remove(cand.cluster_queue, cand.usage)
            gone.append(cand)
            removed.append(Target(cand.wl.id, cand.cluster_queue, reason))
            ledger.remove(cq, usage)
            fits = self._fits(cq, usage, borrowing=True)
            ledger.add(cq, usage)
            return fits

        fits, retry = self._fair_first_pass(cq, need, candidates, take)
        if not fits and retry:
            fits = self._fair_second_pass(cq, retry, take)
        ledger.remove(cq, usage)
        if fits:
            kept = {c.wl.id for c in self._fill_back(cq, usage, gone, borrowing=True)}
            removed = [t for t in removed if t.id in kept]
            gone = [c for c in gone if c.wl.id in kept]
        for cand in gone:
            ledger.add(cand.cluster_queue, cand.usage)
        return removed if fits else []

    def _fair_first_pass(
        self, cq: str, need: set[FlavorResource], candidates: list[Running], take: Any
    ) -> tuple[bool, list[Running]]:
        """Kueue's rule S2-a (LessThanOrEqualToFinalShare): evict from the queue with the
        highest share while the preemptor's share stays at or below the target's share after
        the eviction. A preemptor within its nominal quota reclaims unconditionally."""
        ledger = self.ledger
        by_queue = _group(candidates)
        retry: list[Running] = []
        within_nominal = not any(ledger.borrowing_with(cq, fr) for fr in need)
        pruned: set[str] = set()
        while True:
            target = self._highest_share(cq, by_queue, pruned)
            if target is None:
                return False, retry
            queue = by_queue[target]
            if target == cq or within_nominal:
                cand = queue.pop(0)
                reason = IN_CLUSTER_QUEUE if target == cq else IN_COHORT_RECLAMATION
                if take(cand, reason):
                    return True, retry
                continue
            preemptor_share = ledger.drs(cq)
            while queue:
                cand = queue.pop(0)
                ledger.remove(target, cand.usage)
                target_after = ledger.drs(target)
                ledger.add(target, cand.usage)
                if compare_drs(preemptor_share, target_after) <= 0:
                    if take(cand, IN_COHORT_FAIR_SHARING):
                        return True, retry
                    break  # shares moved: pick the queue with the highest share again
                retry.append(cand)

    def _fair_second_pass(self, cq: str, retry: list[Running], take: Any) -> bool:
        """Kueue's rule S2-b (LessThanInitialShare): evict one workload from each queue whose
        share before the eviction is above the preemptor's."""
        by_queue = _group(retry)
        pruned: set[str] = set()
        while True:
            target = self._highest_share(cq, by_queue, pruned)
            if target is None:
                return False
            preemptor_share, target_share = self.ledger.drs(cq), self.ledger.drs(target)
            cand = by_queue[target].pop(0)
            if compare_drs(preemptor_share, target_share) < 0 and take(
                cand, IN_COHORT_FAIR_SHARING
            ):
                return True
            pruned.add(target)

    def _highest_share(
        self, cq: str, by_queue: dict[str, list[Running]], pruned: set[str]
    ) -> str | None:
        """The queue to take the next candidate from: the highest dominant resource share
        among those that still have candidates and borrow (the preemptor's own queue is
        always eligible); ties go to the queue whose first candidate comes first."""
        best: str | None = None
        best_share = DRS(share=-1.0)
        members = self.ledger.members.get(self.ledger.cohort_of.get(cq, ""), [cq])
        for name in members:
            if name in pruned:
                continue
            share = self.ledger.drs(name)
            if not by_queue.get(name) or (not share.borrowing and name != cq):
                pruned.add(name)
                continue
            order = compare_drs(share, best_share)
            if order > 0 or (
                order == 0
                and best is not None
                and _order(by_queue[name][0], cq) < _order(by_queue[best][0], cq)
            ):
                best, best_share = name, share
        return best


def _eligible(
    wl: _Job, running: Iterable[Running], policy: str, need: set[FlavorResource]
) -> list[Running]:
    out = []
    for r in running:
        other = r.wl
        if policy == "LowerPriority":
            allowed = other.priority < wl.priority
        elif policy == "LowerOrNewerEqualPriority":
            allowed = other.priority < wl.priority or (
                other.priority == wl.priority and wl.created < other.created
            )
        else:
            allowed = policy == "Any"
        if allowed and any(fr in r.usage for fr in need):
            out.append(r)
    return out


def _order(r: Running, cq: str) -> tuple[bool, bool, int, float, str]:
    """Kueue's candidate order: already evicting first, other queues first, lower priority
    first, most recently admitted first; ties by id."""
    return (not r.wl.evicting, r.cluster_queue == cq, r.wl.priority, -r.wl.admission.at, r.wl.id)


def _group(candidates: list[Running]) -> dict[str, list[Running]]:
    by_queue: dict[str, list[Running]] = {}
    for c in candidates:
        by_queue.setdefault(c.cluster_queue, []).append(c)
    return by_queue


# Kueue's preemptionMode, worst to best; an assignment's mode is NO_FIT, PREEMPT or FIT.
NO_FIT, NO_CANDIDATES, PREEMPT, RECLAIM, FIT = range(5)


@dataclass(slots=True)
class Assignment:
    """Flavors chosen for a workload's resources, the usage they make, and how they can be
    had: FIT now, PREEMPT (evicting others), or NO_FIT; ``borrow`` is 1 when quota comes from
    the cohort; ``need`` are the (flavor, resource) pairs short of quota."""

    flavors: dict[str, str] = field(default_factory=dict)
    usage: dict[FlavorResource, int] = field(default_factory=dict)
    mode: int = FIT
    borrow: int = 0
    reasons: list[str] = field(default_factory=list)
    need: set[FlavorResource] = field(default_factory=set)

    @property
    def message(self) -> str:
        return "couldn't assign flavors to pod set main: " + ", ".join(sorted(self.reasons))


class FlavorAssigner:
    """Kueue's flavorassigner for a workload of one pod set: per resource group, the flavors
    in order, each judged on every covered resource the workload requests."""

    def __init__(
        self,
        ledger: Ledger,
        queues: dict[str, ClusterQueue],
        preemptor: Preemptor,
        fair_sharing: bool,
    ) -> None:
        self.ledger = ledger
        self.queues = queues
        self.preemptor = preemptor
        self.fair_sharing = fair_sharing

    def assign(self, wl: _Job, cq: str, requests: dict[str, int]) -> Assignment:
        spec = self.queues[cq]
        out = Assignment()
        done: set[str] = set()
        for resource in sorted(requests):
            if resource in done:
                continue
            group = spec.group_of(resource)
            if group is None:
                out.reasons.append(f"resource {resource} unavailable in ClusterQueue")
                out.mode = NO_FIT
                return out
            covered = [r for r in group.covered if r in requests]
            done.update(covered)
            best: dict[str, tuple[str, int, int]] | None = None
            best_mode = (NO_FIT, math.inf)
            reasons: list[str] = []
            for flavor in group.flavors:
                mode: tuple[int, float] = (FIT, 0)
                chosen: dict[str, tuple[str, int, int]] = {}
                for r in covered:
                    m, b, why = self._fits(wl, cq, (flavor.name, r), requests[r])
                    if why:
                        reasons.append(why)
                    if _preferred(mode, (m, b)):
                        mode = (m, b)
                    if mode[0] == NO_FIT:
                        break
                    chosen[r] = (flavor.name, m, b)
                if not _try_next(mode, spec.flavor_fungibility):
                    best, best_mode = chosen, mode
                    break
                if _preferred(mode, best_mode):
                    best, best_mode = chosen, mode
            if best is None or best_mode[0] == NO_FIT:
                out.reasons += reasons
                out.mode = NO_FIT
                return out
            if best_mode[0] != FIT:
                out.reasons += reasons
                out.mode = PREEMPT
            for r, (f, m, b) in best.items():
                out.flavors[r] = f
                out.usage[(f, r)] = requests[r]
                out.borrow = max(out.borrow, b)
                if m != FIT:
                    out.need.add((f, r))
        return out

    def targets(self, wl: _Job, cq: str, a: Assignment) -> list[Target]:
        if a.mode != PREEMPT:
            return []
        return self.preemptor.targets(wl, cq, a.usage, a.need)

    def _fits(self, wl: _Job, cq: str, fr: FlavorResource, amount: int) -> tuple[int, int, str]:
        """Kueue's fitsResourceQuota: the mode, borrowing level and reason for one
        (flavor, resource)."""
        ledger = self.ledger
        most = ledger.potential(cq, fr)
        if amount > most:
            return (
                NO_FIT,
                0,
                f"insufficient quota for {fr[1]} in flavor {fr[0]}, request > maximum capacity "
                f"({_fmt(amount)} > {_fmt(most)})",
            )
        borrow = ledger.borrow_level(cq, fr, amount)
        free = ledger.available(cq, fr)
        if amount <= free:
            return FIT, borrow, ""
        short = _fmt(amount - free)
        why = f"insufficient unused quota for {fr[1]} in flavor {fr[0]}, {short} more needed"
        spec = self.queues[cq]
        may_reclaim = cq in ledger.cohort_of and not ledger.borrowing_with(cq, fr, amount)
        fair_reclaim = self.fair_sharing and spec.preemption.reclaim_within_cohort != "Never"
        if not (ledger.limits[cq][fr].nominal >= amount or may_reclaim or fair_reclaim):
            return NO_FIT, borrow, why
        targets = self.preemptor.targets(wl, cq, {fr: amount}, {fr})
        if not targets:
            return NO_CANDIDATES, borrow, why
        running = [self.preemptor.running[t.cluster_queue][t.id] for t in targets]
        for r in running:
            ledger.remove(r.cluster_queue, r.usage)
        borrow = ledger.borrow_level(cq, fr, amount)
        for r in running:
            ledger.add(r.cluster_queue, r.usage)
        mode = PREEMPT if any(t.cluster_queue == cq for t in targets) else RECLAIM
        return mode, borrow, why


def _preferred(a: tuple[int, float], b: tuple[int, float]) -> bool:
    """Whether mode ``a`` is better than ``b`` (Kueue's isPreferred, borrowing preferred
    over preemption): a flavor without candidates ranks below any viable one."""
    if a[0] == NO_FIT:
        return False
    if b[0] == NO_FIT:
        return True
    if (a[0] == NO_CANDIDATES) != (b[0] == NO_CANDIDATES):
        return a[0] != NO_CANDIDATES
    if a[0] != b[0]:
        return a[0] > b[0]
    return a[1] < b[1]


def _try_next(mode: tuple[int, float], fungibility: FlavorFungibility) -> bool:
    if mode[0] in (NO_FIT, NO_CANDIDATES):
        return True
    if mode[0] in (PREEMPT, RECLAIM) and fungibility.when_can_preempt == "TryNextFlavor":
        return True
    return bool(mode[1]) and fungibility.when_can_borrow == "TryNextFlavor"


def _fmt(milli: int) -> str:
    return f"{milli / 1000:.12g}"
