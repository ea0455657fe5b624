"""What ``keel queues`` shows: each cluster queue's quota and usage, rebuilt from the stored
jobs (any process can read it, not only the one running the scheduler), and why each
pending job waits, as the scheduler last recorded it."""

from __future__ import annotations

from dataclasses import dataclass

from keel.jobs.admission import Admission, QueueUsage, Scheduler, Workload
from keel.jobs.spec import JobsConfig
from keel.jobs.store import JobRecord, JobState, JobStore

__all__ = ["QueuesSnapshot", "snapshot"]


@dataclass(frozen=True, slots=True)
class QueuesSnapshot:
    queues: list[QueueUsage]
    waiting: list[JobRecord]  # pending jobs, oldest first


def snapshot(config: JobsConfig, store: JobStore) -> QueuesSnapshot:
    """Usage of every cluster queue by the jobs that hold quota now, and the pending jobs."""
    scheduler = Scheduler(config)
    waiting = []
    for job in store.unfinished():
        wl = Workload(
            id=job.id,
            queue=job.queue,
            priority=job.priority,
            requests=dict(job.requests),
            created=job.created_at,
        )
        if job.state is JobState.PENDING:
            scheduler.submit(wl)
            waiting.append(job)
        elif job.state.holds_quota and job.admission:
            wl.admission = Admission(
                cluster_queue=job.admission["cluster_queue"],
                flavors=dict(job.admission.get("flavors", {})),
                at=float(job.admission.get("at", job.created_at)),
            )
            scheduler.restore(wl)
    return QueuesSnapshot(scheduler.usage(), waiting)
