"""The jobs page: each cluster queue's quota, usage, borrowed and lent; pending jobs with
Kueue's reason; running jobs with how far they have come; preemptions (``keel queues`` and
``keel jobs list``)."""

from __future__ import annotations

import time
from typing import Any

from keel.jobs.queues import snapshot
from keel.jobs.spec import format_quantity
from keel.jobs.store import JobState
from keel.ui.text import duration, stamp_ts

__all__ = ["jobs_page"]

RUNNING = (JobState.ADMITTED, JobState.RUNNING, JobState.PREEMPTING, JobState.CANCELLING)


def _requests(requests: dict[str, float]) -> str:
    parts = [f"{name} {format_quantity(name, v)}" for name, v in sorted(requests.items())]
    return ", ".join(parts) or "nothing"


def jobs_page(state: Any, *, recent: int = 30) -> dict[str, Any]:
    project = state.project
    store = project.jobs
    snap = snapshot(project.settings.jobs, store)
    now = time.time()
    queues = []
    for q in snap.queues:
        resources = []
        for r in q.resources:
            fmt = lambda v, res=r.resource: format_quantity(res, v)  # noqa: E731
            resources.append(
                {
                    "flavor": r.flavor,
                    "resource": r.resource,
                    "nominal": fmt(r.nominal),
                    "used": fmt(r.used),
                    "borrowed": fmt(r.borrowed),
                    "lent": fmt(r.lent),
                    "share": min(1.0, r.used / r.nominal) if r.nominal else 0.0,
                    "over": r.used > r.nominal,
                }
            )
        queues.append({"queue": q, "resources": resources})
    pending = [
        {
            "job": j,
            "requests": _requests(j.requests),
            "waiting": duration(now - j.created_at),
        }
        for j in snap.waiting
    ]
    unfinished = store.unfinished()
    running = [
        {
            "job": j,
            "requests": _requests(j.requests),
            "admitted_to": (j.admission or {}).get("cluster_queue", "—"),
            "for": duration(now - j.started_at) if j.started_at else "—",
            "progress": _progress(j),
        }
        for j in unfinished
        if j.state in RUNNING
    ]
    jobs = store.list(limit=recent)
    preempted = [
        {
            "job": j,
            "events": [
                {"at": stamp_ts(e.at), "reason": e.reason, "attempt": e.attempt}
                for e in store.events(j.id)
                if e.to_state == JobState.PREEMPTING.value
            ],
        }
        for j in jobs
        if j.preemptions
    ]
    return {
        "queues": queues,
        "pending": pending,
        "running": running,
        "preempted": preempted,
        "recent": [
            {
                "job": j,
                "created": stamp_ts(j.created_at),
                "took": duration(j.finished_at - j.started_at)
                if j.finished_at and j.started_at
                else "—",
            }
            for j in reversed(jobs)
        ],
    }


def _progress(job: Any) -> str:
    """How far a running job has come: its attempt and its output's last line."""
    line = next((ln.strip() for ln in reversed(job.log_tail) if ln.strip()), "")
    attempt = f"attempt {job.attempt}" + (f" of {job.max_retries + 1}" if job.max_retries else "")
    return f"{attempt}: {line[-160:]}" if line else f"{attempt}: no output yet"
