"""What ``keel.toml``'s ``[jobs]`` table declares: resource flavors, cluster queues with their
quotas, local queues and priority classes, in Kueue's terms.

A leaf module (it imports only :mod:`keel.errors`) so that :mod:`keel.config` can type the
table with it. Quantities are numbers or Kubernetes-style strings (``"500m"`` cpu,
``"16Gi"`` memory) and are held as floats: cpu in cores, memory in bytes, accelerators in
devices.

Example
-------
>>> cfg = msgspec.convert({
...     "flavors": [{"name": "default"}],
...     "cluster_queues": [{"name": "training", "cohort": "keel", "resource_groups": [
...         {"covered": ["cpu", "memory"], "flavors": [
...             {"name": "default", "resources": {"cpu": {"nominal": 8},
...                                               "memory": {"nominal": "16Gi"}}}]}]}],
...     "local_queues": [{"name": "default", "cluster_queue": "training"}],
... }, JobsConfig)
>>> cfg.cluster_queues[0].quota("default", "memory").nominal / 2**30
16.0
>>> parse_quantity("500m")
0.5
"""

from __future__ import annotations

import math
import os
import re
from typing import Literal

import msgspec

from keel.errors import ValidationError, did_you_mean

__all__ = [
    "CPU",
    "DEFAULT_PRIORITY_CLASSES",
    "GPU",
    "MEMORY",
    "ClusterQueue",
    "FlavorFungibility",
    "FlavorQuotas",
    "JobsConfig",
    "LocalQueue",
    "PreemptionPolicy",
    "PriorityClass",
    "Quota",
    "ResourceFlavor",
    "ResourceGroup",
    "UtilizationConfig",
    "format_quantity",
    "parse_quantity",
    "parse_requests",
]

CPU = "cpu"
MEMORY = "memory"
GPU = "nvidia.com/gpu"

QueueingStrategy = Literal["BestEffortFIFO", "StrictFIFO"]
WithinClusterQueue = Literal["Never", "LowerPriority", "LowerOrNewerEqualPriority"]
ReclaimWithinCohort = Literal["Never", "LowerPriority", "Any"]

_SUFFIXES = {
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}
_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_quantity(value: float | int | str, what: str = "quantity") -> float:
    """A Kubernetes-style quantity as a float: ``2``, ``"1.5"``, ``"500m"``, ``"16Gi"``."""
    if isinstance(value, bool):
        raise ValidationError(f"{what} must be a number or a quantity such as '16Gi', not {value}")
    if isinstance(value, int | float):
        number = float(value)
    else:
        match = _QUANTITY.match(str(value))
        if not match or match.group(2) not in ("", *_SUFFIXES):
            raise ValidationError(
                f"{what} {value!r} is not a quantity: give a number, or one with a suffix "
                f"({', '.join(_SUFFIXES)}), e.g. '500m' or '16Gi'"
            )
        number = float(match.group(1)) * _SUFFIXES.get(match.group(2), 1.0)
    if not math.isfinite(number) or number < 0:
        raise ValidationError(f"{what} must be a finite number >= 0, got {value!r}")
    return number


def format_quantity(resource: str, value: float | None) -> str:
    """A quantity as a person reads it: memory in GiB, anything else as a plain number.

    >>> format_quantity("memory", 8 * 2**30), format_quantity("cpu", 0.5)
    ('8Gi', '0.5')
    """
    if value is None:
        return "—"
    return f"{value / 2**30:.4g}Gi" if resource == MEMORY else f"{value:g}"


def parse_requests(requests: dict[str, float | int | str], what: str = "job") -> dict[str, float]:
    """Resource requests by name, quantities parsed; zero requests are dropped."""
    out: dict[str, float] = {}
    for name, value in requests.items():
        amount = parse_quantity(value, f"{what}'s {name} request")
        if amount > 0:
            out[name] = amount
    return out


class ResourceFlavor(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A kind of machine (Kueue's ResourceFlavor): ``default``, ``a100``, ``spot``…;
    ``labels`` describe it (the node labels a cluster would match)."""

    name: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class Quota(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One resource's quota in one flavor of a cluster queue.

    ``nominal`` is the queue's own; ``borrowing_limit`` caps what it may borrow from its
    cohort beyond that (None: no cap); ``lending_limit`` caps what of its unused nominal
    quota it lends to the cohort (None: all of it)."""

    nominal: float | str
    borrowing_limit: float | str | None = None
    lending_limit: float | str | None = None

    def __post_init__(self) -> None:
        self.nominal = parse_quantity(self.nominal, "nominal quota")
        if self.borrowing_limit is not None:
            self.borrowing_limit = parse_quantity(self.borrowing_limit, "borrowing_limit")
        if self.lending_limit is not None:
            self.lending_limit = parse_quantity(self.lending_limit, "lending_limit")
            if self.lending_limit > self.nominal:
                raise ValidationError(
                    f"lending_limit {self.lending_limit:g} is above the nominal quota "
                    f"{self.nominal:g}: a queue lends at most what it has"
                )


class FlavorQuotas(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A flavor's quotas within a resource group, one per covered resource."""

    name: str
    resources: dict[str, Quota]


class ResourceGroup(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Resources that are assigned a flavor together, tried in the order of ``flavors``
    (flavor fungibility: the first flavor that fits is taken)."""

    covered: list[str]
    flavors: list[FlavorQuotas]

    def __post_init__(self) -> None:
        if not self.covered or not self.flavors:
            raise ValidationError("a resource group needs covered resources and flavors")
        for f in self.flavors:
            if set(f.resources) != set(self.covered):
                raise ValidationError(
                    f"flavor {f.name!r} gives quotas for {sorted(f.resources)}, but its "
                    f"resource group covers {sorted(self.covered)}: give one for each"
                )


class PreemptionPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Kueue's ClusterQueue preemption: whom a pending job may evict in its own queue
    (``within_cluster_queue``) and in the cohort's other queues, to reclaim the quota they
    borrowed (``reclaim_within_cohort``)."""

    within_cluster_queue: WithinClusterQueue = "Never"
    reclaim_within_cohort: ReclaimWithinCohort = "Never"


class FlavorFungibility(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Whether to borrow or preempt in a flavor (``Borrow``/``Preempt``) or try the next
    flavor first (``TryNextFlavor``)."""

    when_can_borrow: Literal["Borrow", "TryNextFlavor"] = "Borrow"
    when_can_preempt: Literal["Preempt", "TryNextFlavor"] = "TryNextFlavor"


class ClusterQueue(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A pool of quota (Kueue's ClusterQueue), alone or in a ``cohort`` whose queues borrow
    each other's unused quota."""

    name: str
    cohort: str = ""
    resource_groups: list[ResourceGroup] = msgspec.field(default_factory=list)
    queueing_strategy: QueueingStrategy = "BestEffortFIFO"
    preemption: PreemptionPolicy = msgspec.field(default_factory=PreemptionPolicy)
    flavor_fungibility: FlavorFungibility = msgspec.field(default_factory=FlavorFungibility)
    fair_weight: float = 1.0

    def __post_init__(self) -> None:
        _check_name(self.name, "cluster queue")
        seen: set[str] = set()
        for group in self.resource_groups:
            twice = seen & set(group.covered)
            if twice:
                raise ValidationError(
                    f"cluster queue {self.name!r}: resource {sorted(twice)[0]!r} is covered "
                    "by two resource groups"
                )
            seen |= set(group.covered)
        if not self.fair_weight > 0:
            raise ValidationError(
                f"cluster queue {self.name!r}: fair_weight must be > 0, got {self.fair_weight}"
            )

    @property
    def resources(self) -> list[str]:
        return [r for g in self.resource_groups for r in g.covered]

    def group_of(self, resource: str) -> ResourceGroup | None:
        return next((g for g in self.resource_groups if resource in g.covered), None)

    def quota(self, flavor: str, resource: str) -> Quota | None:
        group = self.group_of(resource)
        if group is None:
            return None
        fq = next((f for f in group.flavors if f.name == flavor), None)
        return None if fq is None else fq.resources[resource]


class LocalQueue(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where jobs are submitted; it feeds one cluster queue."""

    name: str
    cluster_queue: str

    def __post_init__(self) -> None:
        _check_name(self.name, "local queue")


class PriorityClass(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A named priority; a higher ``value`` is more urgent."""

    name: str
    value: int
    description: str = ""


#: Keel's own classes: backfills yield to training, training to the retrains the monitor
#: asks for, and those to fine-tunes, which keep serving fresh.
DEFAULT_PRIORITY_CLASSES = [
    PriorityClass(name="backfill", value=0, description="backfills and materialization"),
    PriorityClass(name="training", value=100, description="training and training-set builds"),
    PriorityClass(name="monitor", value=300, description="monitor scoring"),
    PriorityClass(name="retrain", value=500, description="retrains asked for by the monitor"),
    PriorityClass(name="fine-tune", value=1000, description="continuous fine-tuning"),
]


class UtilizationConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The accelerator watch: sample every ``interval_s``; alert when a device's or a job's
    mean utilization over ``window_s`` stays under ``threshold`` (a share)."""

    threshold: float = 0.6
    window_s: float = 300.0
    interval_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValidationError(
                f"utilization threshold must be within (0, 1], got {self.threshold}"
            )
        if not 0 < self.interval_s <= self.window_s:
            raise ValidationError("utilization interval_s must be > 0 and at most window_s")


class JobsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[jobs]`` table. Left empty, one flavor ``default`` and one cluster queue
    ``default`` holding this machine's cpus, memory and GPUs, fed by local queue ``default``,
    preempting lower priorities."""

    flavors: list[ResourceFlavor] = msgspec.field(default_factory=list)
    cluster_queues: list[ClusterQueue] = msgspec.field(default_factory=list)
    local_queues: list[LocalQueue] = msgspec.field(default_factory=list)
    priority_classes: list[PriorityClass] = msgspec.field(
        default_factory=lambda: list(DEFAULT_PRIORITY_CLASSES)
    )
    default_queue: str = "default"
    default_priority: str = "training"
    fair_sharing: bool = False
    max_retries: int = 2
    utilization: UtilizationConfig = msgspec.field(default_factory=UtilizationConfig)

    def __post_init__(self) -> None:
        if not self.flavors and not self.cluster_queues and not self.local_queues:
            self.flavors, self.cluster_queues, self.local_queues = _machine_default()
        flavors = [f.name for f in self.flavors]
        cqs = [c.name for c in self.cluster_queues]
        for kind, names in (("flavor", flavors), ("cluster queue", cqs)):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValidationError(f"{kind} {sorted(dup)[0]!r} is declared twice")
        for cq in self.cluster_queues:
            for group in cq.resource_groups:
                for fq in group.flavors:
                    if fq.name not in flavors:
                        raise ValidationError(
                            f"cluster queue {cq.name!r} gives quota in flavor {fq.name!r}, "
                            f"which is not declared{did_you_mean(fq.name, flavors)}; "
                            f"flavors: {', '.join(flavors)}"
                        )
        for lq in self.local_queues:
            if lq.cluster_queue not in cqs:
                raise ValidationError(
                    f"local queue {lq.name!r} feeds cluster queue {lq.cluster_queue!r}, which "
                    f"is not declared{did_you_mean(lq.cluster_queue, cqs)}"
                )
        if self.max_retries < 0:
            raise ValidationError(f"jobs max_retries must be >= 0, got {self.max_retries}")
        if self.priority_classes and self.default_priority not in self.priority_names:
            raise ValidationError(
                f"default_priority {self.default_priority!r} is not a priority class"
                f"{did_you_mean(self.default_priority, self.priority_names)}"
            )

    @property
    def priority_names(self) -> list[str]:
        return [p.name for p in self.priority_classes]

    def priority(self, name: str) -> int:
        """The value of priority class ``name``; an unknown name is refused."""
        for p in self.priority_classes:
            if p.name == name:
                return p.value
        raise ValidationError(
            f"unknown priority class {name!r}{did_you_mean(name, self.priority_names)}; "
            f"known: {', '.join(self.priority_names)}"
        )

    def cluster_queue_of(self, local_queue: str) -> ClusterQueue:
        """The cluster queue that local queue ``local_queue`` feeds; unknown is refused."""
        names = [q.name for q in self.local_queues]
        for lq in self.local_queues:
            if lq.name == local_queue:
                return next(c for c in self.cluster_queues if c.name == lq.cluster_queue)
        raise ValidationError(
            f"unknown queue {local_queue!r}{did_you_mean(local_queue, names)}; "
            f"queues: {', '.join(names) or 'none'}"
        )


def _machine_default() -> tuple[list[ResourceFlavor], list[ClusterQueue], list[LocalQueue]]:
    cpus = os.cpu_count() or 1
    try:
        memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        memory = 8 * 2.0**30
    resources = {CPU: Quota(nominal=float(cpus)), MEMORY: Quota(nominal=memory)}
    from keel.jobs.devices import nvidia_device_count  # NVML only when no queues are set

    gpus = nvidia_device_count()
    if gpus:
        resources[GPU] = Quota(nominal=float(gpus))
    cq = ClusterQueue(
        name="default",
        resource_groups=[
            ResourceGroup(
                covered=list(resources), flavors=[FlavorQuotas(name="default", resources=resources)]
            )
        ],
        preemption=PreemptionPolicy(within_cluster_queue="LowerPriority"),
    )
    return (
        [ResourceFlavor(name="default")],
        [cq],
        [LocalQueue(name="default", cluster_queue="default")],
    )


def _check_name(name: str, what: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValidationError(
            f"{what} name {name!r} is invalid: use letters, digits, '-', '_', '.'"
        )
