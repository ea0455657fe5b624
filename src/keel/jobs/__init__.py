"""Jobs: training, fine-tuning, backfills and monitor scoring, admitted by queues, quotas
and priorities with Kubernetes Kueue's semantics, run on this machine (``local://``) or a
Dask cluster (``dask://``), preempted gracefully, with the accelerators' utilization
watched.

- :mod:`keel.jobs.spec`: flavors, cluster queues, local queues, priority classes;
- :mod:`keel.jobs.admission`: the admission engine (quota, cohorts, borrowing, preemption);
- :mod:`keel.jobs.store`: jobs and their lifecycle in the registry's database;
- :mod:`keel.jobs.executors`: where attempts run;
- :mod:`keel.jobs.manager`: the loop that ties them together;
- :mod:`keel.jobs.devices`: what the accelerators report (NVML, or a scripted source);
- :mod:`keel.jobs.utilization`: the accelerator-utilization watch.
"""

from typing import TYPE_CHECKING, Any

from keel.jobs.spec import (
    ClusterQueue,
    JobsConfig,
    LocalQueue,
    PriorityClass,
    ResourceFlavor,
    parse_quantity,
)

if TYPE_CHECKING:
    from keel.jobs.store import JobRecord, JobState, JobStore

__all__ = [
    "ClusterQueue",
    "JobRecord",
    "JobState",
    "JobStore",
    "JobsConfig",
    "LocalQueue",
    "PriorityClass",
    "ResourceFlavor",
    "parse_quantity",
]

# The store pulls in SQLAlchemy; keel.config imports keel.jobs.spec, so the package stays
# light and the store is loaded when first named.
_LAZY = {"JobRecord", "JobState", "JobStore"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from keel.jobs import store

        return getattr(store, name)
    raise AttributeError(f"module 'keel.jobs' has no attribute {name!r}")
