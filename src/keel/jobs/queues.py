"""What ``keel queues`` shows: each cluster queue's quota and usage, rebuilt from the stored
jobs (any process can read it, not only the one running the scheduler), and why each
pending job waits, as the scheduler last recorded it."""

from __future__ import annotations

from dataclasses import dataclass

from keel.jobs.admission import Admission, QueueUsage, Scheduler, Workload
from keel.jobs.spec import JobsConfig
from keel.jobs.store import JobRecord, JobState, JobStore

__all__ = ["QueuesSnapshot", "admission", "snapshot", "workload"]


@dataclass(frozen=True, slots=True)
class QueuesSnapshot:
    queues: list[QueueUsage]
    waiting: list[JobRecord]  # pending jobs, oldest first


def snapshot(config: JobsConfig, store: JobStore) -> QueuesSnapshot:
    """Usage of every cluster queue by the jobs that hold quota now, and the pending jobs."""
    scheduler = Scheduler(config)
    waiting = []
    for job in store.unfinished():
        wl = workload(job)
        if job.state is JobState.PENDING:
            scheduler.submit(wl)
            waiting.append(job)
        elif job.state.holds_quota and job.admission:
            wl.admission = admission(job)
            scheduler.restore(wl)
    return QueuesSnapshot(scheduler.usage(), waiting)


def workload(job: JobRecord) -> Workload:
    """A stored job as the scheduler sees it (pending: no admission yet)."""
    return Workload(
        id=job.id,
        queue=job.queue,
        priority=job.priority,
        requests=dict(job.requests),
        created=job.created_at,
    )


def admission(job: JobRecord) -> Admission:
    """Where a stored job was admitted: its cluster queue, flavors and time."""
    a = job.admission or {}
    return Admission(
        cluster_queue=a.get("cluster_queue", ""),
        flavors=dict(a.get("flavors", {})),
        at=float(a.get("at", job.admitted_at or job.created_at)),
    )
