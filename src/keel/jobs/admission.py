"""Which pending jobs start: an in-memory, deterministic admission engine with Kubernetes
Kueue's semantics (``pkg/scheduler/scheduler.go`` and ``flavorassigner``).

Each :meth:`Scheduler.cycle` takes the head of every cluster queue (highest priority, then
oldest), assigns flavors against the quota left, orders the heads as Kueue does (those within
nominal quota before those that borrow, then priority, then age) and admits them one by one,
re-checking the quota each admission used. A head that needs room evicts lower-priority work
(see :mod:`keel.jobs.preemption`) and stays pending until the caller :meth:`~Scheduler.release`
or :meth:`~Scheduler.requeue` the victims. Nothing here does I/O or reads a clock: ``now`` is
given.

Example
-------
>>> import msgspec
>>> from keel.jobs.spec import JobsConfig
>>> config = msgspec.convert({"flavors": [{"name": "default"}],
...     "cluster_queues": [{"name": "cq", "resource_groups": [{"covered": ["cpu"],
...         "flavors": [{"name": "default", "resources": {"cpu": {"nominal": 4}}}]}]}],
...     "local_queues": [{"name": "main", "cluster_queue": "cq"}]}, JobsConfig)
>>> scheduler = Scheduler(config)
>>> scheduler.submit(Workload("a", "main", priority=0, requests={"cpu": 3}, created=1.0))
>>> scheduler.submit(Workload("b", "main", priority=0, requests={"cpu": 2}, created=2.0))
>>> [w.id for w in scheduler.cycle(now=10.0).admitted]
['a']
>>> result = scheduler.cycle(now=10.5)  # one head per cluster queue and cycle
>>> print(result.pending["b"].split(": ", 1)[1])
insufficient unused quota for cpu in flavor default, 1 more needed
>>> _ = scheduler.release("a")
>>> [w.id for w in scheduler.cycle(now=11.0).admitted]
['b']
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field

from keel.errors import NotFoundError, ValidationError, did_you_mean
from keel.jobs.fairshare import FlavorResource, Ledger, to_milli
from keel.jobs.preemption import (
    NO_FIT,
    PREEMPT,
    Assignment,
    FlavorAssigner,
    Preemptor,
    Running,
    Target,
)
from keel.jobs.spec import ClusterQueue, JobsConfig

__all__ = [
    "Admission",
    "CycleResult",
    "Eviction",
    "QueueUsage",
    "ResourceUsage",
    "Scheduler",
    "Workload",
]

NO_LONGER_FITS = "Workload no longer fits after processing another workload"
OVERLAPPING = "Workload has overlapping preemption targets with another workload"


@dataclass(frozen=True, slots=True)
class Admission:
    """Where a workload was admitted: its cluster queue, the flavor of each resource, and
    when (``at`` orders "most recently admitted")."""

    cluster_queue: str
    flavors: dict[str, str]
    at: float


@dataclass(slots=True)
class Workload:
    """A job as the scheduler sees it: ``requests`` maps resource names to amounts (cpu
    cores, memory bytes, devices); ``created`` orders FIFO, ties broken by ``id``."""

    id: str
    queue: str
    priority: int
    requests: dict[str, float]
    created: float
    admission: Admission | None = None
    evicting: bool = False


@dataclass(frozen=True, slots=True)
class Eviction:
    """``victim`` was chosen to make room for ``by``; ``reason`` is Kueue's
    (``InClusterQueue``, ``InCohortReclamation``, ``InCohortFairSharing``)."""

    victim: str
    by: str
    reason: str


@dataclass(slots=True)
class CycleResult:
    """What one cycle decided: workloads admitted, victims newly marked evicting, and why
    every still-pending workload waits."""

    admitted: list[Workload] = field(default_factory=list)
    evictions: list[Eviction] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """One (flavor, resource) row of a cluster queue: ``borrowed`` is usage beyond nominal,
    ``lent`` what other cohort members use of this queue's quota (the cohort's borrowing
    shared among lenders in proportion to their unused lendable quota)."""

    flavor: str
    resource: str
    nominal: float
    used: float
    borrowed: float
    lent: float
    borrowing_limit: float | None
    lending_limit: float | None


@dataclass(frozen=True, slots=True)
class QueueUsage:
    """A cluster queue's quota and usage, for ``keel queues``."""

    name: str
    cohort: str
    resources: list[ResourceUsage]
    pending: int
    admitted: int


@dataclass(slots=True)
class _Entry:
    """A queue head being considered in this cycle."""

    wl: Workload
    cq: str
    assignment: Assignment
    targets: list[Target]


class Scheduler:
    """Kueue's admission semantics over the cluster queues of a :class:`JobsConfig`.

    Example
    -------
    >>> from keel.jobs.spec import JobsConfig, ClusterQueue, LocalQueue, ResourceFlavor
    >>> s = Scheduler(JobsConfig(flavors=[ResourceFlavor(name="default")],
    ...     cluster_queues=[ClusterQueue(name="cq")],
    ...     local_queues=[LocalQueue(name="main", cluster_queue="cq")]))
    >>> s.submit(Workload("x", "mian", priority=0, requests={}, created=0.0))
    Traceback (most recent call last):
    ...
    keel.errors.ValidationError: unknown queue 'mian' — did you mean 'main'?; queues: main
    """

    def __init__(self, config: JobsConfig) -> None:
        self._config = config
        self._queues: dict[str, ClusterQueue] = {cq.name: cq for cq in config.cluster_queues}
        self._ledger = Ledger(config.cluster_queues)
        self._running: dict[str, dict[str, Running]] = {name: {} for name in self._queues}
        self._preemptor = Preemptor(self._ledger, self._queues, self._running, config.fair_sharing)
        self._assigner = FlavorAssigner(
            self._ledger, self._queues, self._preemptor, config.fair_sharing
        )
        self._local: dict[str, str] = {lq.name: lq.cluster_queue for lq in config.local_queues}
        self._heaps: dict[str, list[tuple[int, float, str, int]]] = {n: [] for n in self._queues}
        self._parked: dict[str, dict[str, None]] = {name: {} for name in self._queues}
        self._sticky: dict[str, str] = {}
        self._workloads: dict[str, Workload] = {}
        self._requests: dict[str, dict[str, int]] = {}
        self._cq_of: dict[str, str] = {}
        self._token: dict[str, int] = {}
        self._reasons: dict[str, str] = {}
        self._pending_count: dict[str, int] = dict.fromkeys(self._queues, 0)
        self._dirty: set[str] = set()
        self._seq = itertools.count()

    # -- the caller's side: jobs come, finish, are evicted --------------------------------

    def submit(self, wl: Workload) -> None:
        """Queue a new workload on its local queue; an unknown queue, a duplicate id, or
        an already-admitted workload is refused."""
        cq = self._check_new(wl)
        if wl.admission is not None:
            raise ValidationError(
                f"workload {wl.id!r} is already admitted to {wl.admission.cluster_queue!r}: "
                "give it to restore(), not submit()"
            )
        self._remember(wl, cq)
        self._push(wl.id)
        self._reasons[wl.id] = f"waiting for a scheduling cycle in cluster queue {cq!r}"

    def restore(self, wl: Workload) -> None:
        """Take back a workload admitted before a restart (``wl.admission`` set): it holds
        its quota again, even beyond what the queue now has (Kueue keeps running work)."""
        cq = self._check_new(wl)
        if wl.admission is None:
            raise ValidationError(
                f"workload {wl.id!r} has no admission: give it to submit() to queue it"
            )
        if wl.admission.cluster_queue != cq:
            raise ValidationError(
                f"workload {wl.id!r} was admitted to cluster queue "
                f"{wl.admission.cluster_queue!r}, but its local queue {wl.queue!r} feeds {cq!r}"
            )
        requests = _milli_requests(wl)
        usage: dict[FlavorResource, int] = {}
        for resource, amount in requests.items():
            flavor = wl.admission.flavors.get(resource)
            if flavor is None or (flavor, resource) not in self._ledger.limits[cq]:
                raise ValidationError(
                    f"workload {wl.id!r}: its admission gives {resource!r} flavor {flavor!r}, "
                    f"which cluster queue {cq!r} has no quota for"
                )
            usage[(flavor, resource)] = amount
        self._remember(wl, cq, requests)
        self._hold(wl, cq, usage)

    def release(self, id: str) -> Workload:
        """Forget a workload that finished, was cancelled, or was evicted and stopped; the
        quota it held is free for the next cycle."""
        wl = self._get(id)
        cq = self._cq_of.pop(id)
        self._drop_pending(id, cq)
        if id in self._running[cq]:
            self._free(id, cq)
        del self._workloads[id], self._requests[id]
        return wl

    def requeue(self, id: str) -> None:
        """Put an admitted workload (evicted, and now stopped) back among the pending, with
        its original ``created`` so it keeps its place; its quota is freed."""
        wl = self._get(id)
        cq = self._cq_of[id]
        if id not in self._running[cq]:
            raise ValidationError(
                f"workload {id!r} is not admitted: only admitted work is requeued"
            )
        self._free(id, cq)
        wl.admission = None
        wl.evicting = False
        self._push(id)
        self._reasons[id] = f"requeued after eviction; waiting in cluster queue {cq!r}"

    # -- one scheduling cycle -------------------------------------------------------------

    def cycle(self, now: float) -> CycleResult:
        """Admit what fits, issue the evictions preemptors need, say why the rest waits."""
        self._unpark()
        entries = []
        for cq in self._queues:
            head = self._head(cq)
            if head is not None:
                wl = self._workloads[head]
                assignment = self._assigner.assign(wl, cq, self._requests[head])
                targets = self._assigner.targets(wl, cq, assignment)
                entries.append(_Entry(wl, cq, assignment, targets))
        result = CycleResult()
        claimed: dict[str, Running] = {}
        reserved: list[tuple[str, dict[FlavorResource, int]]] = []
        for e in self._ordered(entries):
            self._process(e, now, claimed, reserved, result)
        for cq, usage in reserved:
            self._ledger.remove(cq, usage)
        result.pending = dict(self._reasons)
        return result

    def _ordered(self, entries: list[_Entry]):
        if not self._config.fair_sharing:
            entries.sort(key=lambda e: (e.assignment.borrow, -e.wl.priority, e.wl.created, e.wl.id))
            yield from entries
            return
        # Kueue's fair-sharing tournament: the head whose queue would hold the lowest share
        # once admitted goes next, those that need not borrow first; shares change as
        # heads are admitted, so they are recomputed before each pick.
        left = list(entries)
        while left:
            best = min(left, key=self._fair_key)
            left.remove(best)
            yield best

    def _fair_key(self, e: _Entry) -> tuple:
        usage = e.assignment.usage
        share = self._ledger.drs(e.cq, usage)
        return (share.borrowing_on(usage), share.share, -e.wl.priority, e.wl.created, e.wl.id)

    def _process(
        self,
        e: _Entry,
        now: float,
        claimed: dict[str, Running],
        reserved: list[tuple[str, dict[FlavorResource, int]]],
        result: CycleResult,
    ) -> None:
        a, cq = e.assignment, e.cq
        if self._sticky.get(cq) == e.wl.id:
            del self._sticky[cq]
        if a.mode == NO_FIT:
            self._wait(e, a.message, park=True)
            return
        if a.mode == PREEMPT and not e.targets:
            # Without a guarantee to reclaim later, hold the quota this cycle so that
            # lower-priority heads elsewhere in the cohort do not take it first.
            if self._queues[cq].preemption.reclaim_within_cohort != "Any":
                reserved.append((cq, self._reserve(cq, a)))
            self._wait(e, a.message, park=True)
            return
        if any(t.id in claimed for t in e.targets):
            self._wait(e, OVERLAPPING, park=False)
            return
        gone = list(claimed.values()) + [self._running[t.cluster_queue][t.id] for t in e.targets]
        for r in gone:
            self._ledger.remove(r.cluster_queue, r.usage)
        fits = all(amount <= self._ledger.available(cq, fr) for fr, amount in a.usage.items())
        for r in gone:
            self._ledger.add(r.cluster_queue, r.usage)
        if not fits:
            self._wait(e, NO_LONGER_FITS, park=False)
            return
        if a.mode == PREEMPT:
            for t in e.targets:
                claimed[t.id] = self._running[t.cluster_queue][t.id]
                victim = self._workloads[t.id]
                if not victim.evicting:
                    victim.evicting = True
                    result.evictions.append(Eviction(t.id, e.wl.id, t.reason))
            reserved.append((cq, self._reserve(cq, a)))
            self._sticky[cq] = e.wl.id
            n = len(e.targets)
            self._wait(e, f"{a.message}. Pending the preemption of {n} workload(s)", park=False)
            return
        self._drop_pending(e.wl.id, cq)
        e.wl.admission = Admission(cq, dict(a.flavors), now)
        self._hold(e.wl, cq, dict(a.usage))
        result.admitted.append(e.wl)

    def _reserve(self, cq: str, a: Assignment) -> dict[FlavorResource, int]:
        """What a preemptor holds for the rest of the cycle (Kueue's resourcesToReserve):
        up to its nominal quota, or up to its borrowing limit when it must borrow."""
        out: dict[FlavorResource, int] = {}
        for fr, amount in a.usage.items():
            lim = self._ledger.limits[cq][fr]
            used = self._ledger.usage[cq][fr]
            if a.borrow:
                room = None if lim.borrowing_limit is None else lim.nominal + lim.borrowing_limit
                out[fr] = amount if room is None else min(amount, room - used)
            else:
                out[fr] = max(0, min(amount, lim.nominal - used))
        self._ledger.add(cq, out)
        return out

    def _wait(self, e: _Entry, reason: str, park: bool) -> None:
        """Leave a head pending; a BestEffortFIFO queue moves an inadmissible head aside so
        the next workload gets its turn, a StrictFIFO queue keeps it at the front."""
        self._reasons[e.wl.id] = reason
        if park and self._queues[e.cq].queueing_strategy == "BestEffortFIFO":
            heap = self._heaps[e.cq]
            heapq.heappop(heap)
            del self._token[e.wl.id]
            self._parked[e.cq][e.wl.id] = None

    # -- reading the state ----------------------------------------------------------------

    def reason(self, id: str) -> str | None:
        """Why a pending workload waits (its last reason); None once it is admitted."""
        self._get(id)
        return self._reasons.get(id)

    def get(self, id: str) -> Workload:
        """The workload ``id``, pending or admitted."""
        return self._get(id)

    def pending(self) -> list[Workload]:
        """Pending workloads in queue order (priority, then age) within each cluster queue."""
        out = [self._workloads[i] for i in self._reasons]
        out.sort(key=lambda w: (self._cq_of[w.id], -w.priority, w.created, w.id))
        return out

    def admitted(self) -> list[Workload]:
        """Admitted workloads, evicting ones included, most recently admitted last."""
        out = [r.wl for running in self._running.values() for r in running.values()]
        out.sort(key=lambda w: (w.admission.at if w.admission else 0.0, w.id))
        return out  # type: ignore[return-value]

    def usage(self) -> list[QueueUsage]:
        """Quota and usage per cluster queue and (flavor, resource)."""
        ledger = self._ledger
        lent = ledger.lent()
        out = []
        for name, spec in self._queues.items():
            rows = []
            for fr, lim in ledger.limits[name].items():
                used = ledger.usage[name][fr]
                rows.append(
                    ResourceUsage(
                        flavor=fr[0],
                        resource=fr[1],
                        nominal=lim.nominal / 1000,
                        used=used / 1000,
                        borrowed=max(0, used - lim.nominal) / 1000,
                        lent=lent.get((name, fr), 0) / 1000,
                        borrowing_limit=_unmilli(lim.borrowing_limit),
                        lending_limit=_unmilli(lim.lending_limit),
                    )
                )
            out.append(
                QueueUsage(
                    name=name,
                    cohort=spec.cohort,
                    resources=rows,
                    pending=self._pending_count[name],
                    admitted=len(self._running[name]),
                )
            )
        return out

    # -- bookkeeping ----------------------------------------------------------------------

    def _check_new(self, wl: Workload) -> str:
        if wl.id in self._workloads:
            raise ValidationError(f"workload {wl.id!r} is already known: ids must be unique")
        return self._config.cluster_queue_of(wl.queue).name

    def _remember(self, wl: Workload, cq: str, requests: dict[str, int] | None = None) -> None:
        self._requests[wl.id] = _milli_requests(wl) if requests is None else requests
        self._workloads[wl.id] = wl
        self._cq_of[wl.id] = cq

    def _get(self, id: str) -> Workload:
        wl = self._workloads.get(id)
        if wl is None:
            raise NotFoundError(
                f"no workload {id!r} in the scheduler{did_you_mean(id, self._workloads)}"
            )
        return wl

    def _push(self, id: str) -> None:
        wl = self._workloads[id]
        cq = self._cq_of[id]
        token = next(self._seq)
        self._token[id] = token
        heapq.heappush(self._heaps[cq], (-wl.priority, wl.created, id, token))
        self._pending_count[cq] += 1
        self._reasons.setdefault(id, "")

    def _head(self, cq: str) -> str | None:
        sticky = self._sticky.get(cq)
        if sticky is not None and sticky in self._token:
            return sticky
        heap = self._heaps[cq]
        while heap:
            _, _, id, token = heap[0]
            if self._token.get(id) == token:
                return id
            heapq.heappop(heap)  # left behind by a release, a park or a sticky head
        return None

    def _drop_pending(self, id: str, cq: str) -> None:
        if id in self._reasons:
            del self._reasons[id]
            self._pending_count[cq] -= 1
            self._token.pop(id, None)
            self._parked[cq].pop(id, None)
            if self._sticky.get(cq) == id:
                del self._sticky[cq]

    def _hold(self, wl: Workload, cq: str, usage: dict[FlavorResource, int]) -> None:
        self._ledger.add(cq, usage)
        self._running[cq][wl.id] = Running(wl, cq, usage)

    def _free(self, id: str, cq: str) -> None:
        running = self._running[cq].pop(id)
        self._ledger.remove(cq, running.usage)
        cohort = self._ledger.cohort_of.get(cq)
        self._dirty.update(self._ledger.members[cohort] if cohort else (cq,))

    def _unpark(self) -> None:
        """Freed quota gives inadmissible workloads of the cohort another chance."""
        for cq in self._dirty:
            parked = self._parked[cq]
            for id in parked:
                self._pending_count[cq] -= 1  # _push counts it again
                self._push(id)
            parked.clear()
        self._dirty.clear()


def _milli_requests(wl: Workload) -> dict[str, int]:
    out: dict[str, int] = {}
    for resource, amount in wl.requests.items():
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise ValidationError(
                f"workload {wl.id!r}: request {resource!r} must be a number, got {amount!r}"
            )
        if not math.isfinite(amount) or amount < 0:
            raise ValidationError(
                f"workload {wl.id!r}: request {resource!r} must be a finite number >= 0, "
                f"got {amount!r}"
            )
        milli = to_milli(amount)
        if milli:
            out[resource] = milli
    return out


def _unmilli(value: int | None) -> float | None:
    return None if value is None else value / 1000
