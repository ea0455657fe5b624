"""Quota accounting of cluster queues and their cohorts, and the dominant resource share that
fair sharing ranks them by (Kueue's ``pkg/cache`` resource nodes and ``fair_sharing.go``).

Amounts are integers in thousandths of a unit (Kueue counts cpu in millicores), so that sums
and differences are exact. A queue's ``guaranteed`` quota (nominal minus lending limit) is its
own; the rest of its nominal quota is pooled in the cohort. The cohort's usage counts each
member's usage above its guaranteed quota, so it is a function of the members' usages.

Example
-------
>>> from keel.jobs.spec import ClusterQueue, FlavorQuotas, Quota, ResourceGroup
>>> def cq(name, **quota):
...     flavor = FlavorQuotas(name="default", resources={"cpu": Quota(**quota)})
...     group = ResourceGroup(covered=["cpu"], flavors=[flavor])
...     return ClusterQueue(name=name, cohort="all", resource_groups=[group])
>>> ledger = Ledger([cq("a", nominal=9, borrowing_limit=1), cq("b", nominal=12, lending_limit=1)])
>>> ledger.potential("a", ("default", "cpu")) / 1000
10.0
>>> ledger.add("a", {("default", "cpu"): 10_000})
>>> ledger.available("b", ("default", "cpu")) / 1000
11.0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from keel.jobs.spec import ClusterQueue

__all__ = ["DRS", "FlavorResource", "Ledger", "Limits", "compare_drs", "to_milli"]

#: (flavor, resource)
FlavorResource = tuple[str, str]


def to_milli(amount: float) -> int:
    """An amount in thousandths of a unit, the ledger's integer currency."""
    return round(amount * 1000)


@dataclass(frozen=True, slots=True)
class Limits:
    """One (flavor, resource) quota of a cluster queue, in thousandths."""

    nominal: int
    borrowing_limit: int | None
    lending_limit: int | None

    @property
    def guaranteed(self) -> int:
        """Nominal quota never lent to the cohort (Kueue's ``localQuota``)."""
        return 0 if self.lending_limit is None else self.nominal - self.lending_limit

    @property
    def lendable(self) -> int:
        """What this queue's quota adds to its cohort's pool."""
        return self.nominal - self.guaranteed


@dataclass(frozen=True, slots=True)
class DRS:
    """A dominant resource share: ``share`` is usage above nominal over what the cohort can
    lend, times 1000, divided by the queue's fair weight; ``borrowed`` lists the (flavor,
    resource) pairs above nominal."""

    share: float = 0.0
    borrowed: tuple[FlavorResource, ...] = ()

    @property
    def borrowing(self) -> bool:
        return bool(self.borrowed)

    def borrowing_on(self, frs: Iterable[FlavorResource]) -> bool:
        return any(fr in self.borrowed for fr in frs)


def compare_drs(a: DRS, b: DRS) -> int:
    """-1, 0 or 1 as share ``a`` is below, equal to or above share ``b``."""
    return (a.share > b.share) - (a.share < b.share)


class Ledger:
    """Quotas and usage of every cluster queue and cohort.

    ``add`` and ``remove`` move usage; ``available`` is what a queue can still take in a
    (flavor, resource) without preempting, ``potential`` the most it could ever hold.
    """

    def __init__(self, queues: Iterable[ClusterQueue]) -> None:
        self.limits: dict[str, dict[FlavorResource, Limits]] = {}
        self.cohort_of: dict[str, str] = {}
        self.members: dict[str, list[str]] = {}
        self.weight: dict[str, float] = {}
        self.usage: dict[str, dict[FlavorResource, int]] = {}
        self.cohort_capacity: dict[str, dict[FlavorResource, int]] = {}
        self.cohort_usage: dict[str, dict[FlavorResource, int]] = {}
        for cq in queues:
            limits: dict[FlavorResource, Limits] = {}
            for group in cq.resource_groups:
                for flavor in group.flavors:
                    for resource, q in flavor.resources.items():
                        limits[(flavor.name, resource)] = Limits(
                            nominal=to_milli(float(q.nominal)),
                            borrowing_limit=_milli_or_none(q.borrowing_limit),
                            lending_limit=_milli_or_none(q.lending_limit),
                        )
            self.limits[cq.name] = limits
            self.usage[cq.name] = dict.fromkeys(limits, 0)
            self.weight[cq.name] = cq.fair_weight
            if cq.cohort:
                self.cohort_of[cq.name] = cq.cohort
                self.members.setdefault(cq.cohort, []).append(cq.name)
                capacity = self.cohort_capacity.setdefault(cq.cohort, {})
                used = self.cohort_usage.setdefault(cq.cohort, {})
                for fr, lim in limits.items():
                    capacity[fr] = capacity.get(fr, 0) + lim.lendable
                    used.setdefault(fr, 0)
        self._lendable: dict[str, dict[str, int]] = {}
        for cohort, capacity in self.cohort_capacity.items():
            per_resource = self._lendable.setdefault(cohort, {})
            for (_, resource), amount in capacity.items():
                per_resource[resource] = per_resource.get(resource, 0) + amount

    def add(self, cq: str, usage: Mapping[FlavorResource, int]) -> None:
        for fr, amount in usage.items():
            self._move(cq, fr, amount)

    def remove(self, cq: str, usage: Mapping[FlavorResource, int]) -> None:
        for fr, amount in usage.items():
            self._move(cq, fr, -amount)

    def _move(self, cq: str, fr: FlavorResource, delta: int) -> None:
        used = self.usage[cq]
        old = used.get(fr, 0)
        used[fr] = old + delta
        cohort = self.cohort_of.get(cq)
        if cohort is not None:
            guaranteed = self.limits[cq][fr].guaranteed
            self.cohort_usage[cohort][fr] += max(0, old + delta - guaranteed) - max(
                0, old - guaranteed
            )

    def available(self, cq: str, fr: FlavorResource) -> int:
        """Unused quota the queue can take now, borrowing included (never negative)."""
        lim = self.limits[cq][fr]
        used = self.usage[cq][fr]
        cohort = self.cohort_of.get(cq)
        if cohort is None:
            return max(0, lim.nominal - used)
        from_cohort = self.cohort_capacity[cohort][fr] - self.cohort_usage[cohort][fr]
        if lim.borrowing_limit is not None:
            in_cohort = max(0, used - lim.guaranteed)
            from_cohort = min(lim.lendable - in_cohort + lim.borrowing_limit, from_cohort)
        return max(0, max(0, lim.guaranteed - used) + from_cohort)

    def potential(self, cq: str, fr: FlavorResource) -> int:
        """The largest amount the queue could hold with nothing else running."""
        lim = self.limits[cq][fr]
        cohort = self.cohort_of.get(cq)
        if cohort is None:
            return lim.nominal
        most = lim.guaranteed + self.cohort_capacity[cohort][fr]
        if lim.borrowing_limit is not None:
            most = min(lim.nominal + lim.borrowing_limit, most)
        return most

    def borrowing_with(self, cq: str, fr: FlavorResource, amount: int = 0) -> bool:
        """Whether the queue's usage plus ``amount`` goes above its nominal quota."""
        return self.usage[cq][fr] + amount > self.limits[cq][fr].nominal

    def borrow_level(self, cq: str, fr: FlavorResource, amount: int) -> int:
        """1 when taking ``amount`` needs quota from the cohort, else 0 (Kueue's height of
        the lowest subtree that fits, in a one-level cohort)."""
        return int(cq in self.cohort_of and self.borrowing_with(cq, fr, amount))

    def lent(self) -> dict[tuple[str, FlavorResource], float]:
        """What other members use of each queue's quota, per (queue, flavor-resource): a
        cohort's borrowing shared among its lenders in proportion to their unused lendable
        quota (Kueue pools lent quota and does not say whose it is)."""
        out: dict[tuple[str, FlavorResource], float] = {}
        for members in self.members.values():
            for fr in {fr for m in members for fr in self.limits[m]}:
                holders = [m for m in members if fr in self.limits[m]]
                borrowed = sum(
                    max(0, self.usage[m][fr] - self.limits[m][fr].nominal) for m in holders
                )
                if not borrowed:
                    continue
                spare = {}
                for m in holders:
                    lim = self.limits[m][fr]
                    spare[m] = max(0, lim.nominal - max(self.usage[m][fr], lim.guaranteed))
                total = sum(spare.values())
                for m, s in spare.items():
                    if total:
                        out[(m, fr)] = min(s, borrowed * s / total)
        return out

    def drs(self, cq: str, extra: Mapping[FlavorResource, int] | None = None) -> DRS:
        """The queue's dominant resource share, with ``extra`` usage added if given."""
        cohort = self.cohort_of.get(cq)
        if cohort is None:
            return DRS()
        used = self.usage[cq]
        borrowed: dict[str, int] = {}
        frs: list[FlavorResource] = []
        for fr, lim in self.limits[cq].items():
            over = used[fr] + (extra.get(fr, 0) if extra else 0) - lim.nominal
            if over > 0:
                borrowed[fr[1]] = borrowed.get(fr[1], 0) + over
                frs.append(fr)
        if not frs:
            return DRS()
        lendable = self._lendable[cohort]
        ratio = max(
            (amount * 1000 / lendable[r] for r, amount in borrowed.items() if lendable.get(r)),
            default=0.0,
        )
        return DRS(share=ratio / self.weight[cq], borrowed=tuple(frs))


def _milli_or_none(value: float | str | None) -> int | None:
    return None if value is None else to_milli(float(value))
