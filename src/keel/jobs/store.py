"""Jobs and their lifecycle, persisted in the registry's database.

A job is a command with a resource profile, a priority and a queue. Its state changes only
along :data:`TRANSITIONS`, and every change is a compare-and-set in one transaction
(``UPDATE … WHERE id = ? AND state = ?``) with a row in ``job_events``: two schedulers, or a
scheduler and a ``keel jobs cancel``, can never both move the same job, so a job is started
at most once per attempt. The tables live in the registry's database (SQLite embedded,
PostgreSQL scaled out) and are created by its migrations.

Example
-------
>>> import tempfile
>>> store = JobStore(f"sqlite:///{tempfile.mkdtemp()}/registry.db")
>>> job = store.add(JobRecord.new(name="hello", kind="command", queue="default",
...     priority_class="training", priority=100, requests={"cpu": 1.0},
...     argv=["echo", "hi"], cwd="/tmp", max_retries=0, now=1.0))
>>> store.move(job.id, JobState.ADMITTED, now=2.0, admission={"cluster_queue": "default"}).state
<JobState.ADMITTED: 'admitted'>
>>> [e.to_state for e in store.events(job.id)]
['pending', 'admitted']
"""

from __future__ import annotations

import builtins
import enum
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)

from keel.errors import ConflictError, NotFoundError, ValidationError, did_you_mean

__all__ = ["TRANSITIONS", "JobEvent", "JobRecord", "JobState", "JobStore"]


class JobState(enum.StrEnum):
    PENDING = "pending"  # waiting for quota (or requeued after preemption or a retry)
    ADMITTED = "admitted"  # quota reserved, not started yet
    RUNNING = "running"
    PREEMPTING = "preempting"  # asked to stop (SIGTERM) to free its quota; checkpointing
    CANCELLING = "cancelling"  # asked to stop for good
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @property
    def holds_quota(self) -> bool:
        return self in (
            JobState.ADMITTED,
            JobState.RUNNING,
            JobState.PREEMPTING,
            JobState.CANCELLING,
        )


S = JobState
#: Every allowed change of state; anything else is refused.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.PENDING: frozenset({S.ADMITTED, S.CANCELLED}),
    # Evicted before it started, it simply goes back to waiting.
    S.ADMITTED: frozenset({S.RUNNING, S.PENDING, S.FAILED, S.CANCELLED}),
    # Back to PENDING: retried after a failure, or stopped by a SIGTERM it was not sent.
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.PENDING, S.PREEMPTING, S.CANCELLING}),
    S.PREEMPTING: frozenset({S.PENDING, S.SUCCEEDED, S.FAILED, S.CANCELLING}),
    S.CANCELLING: frozenset({S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

metadata = MetaData()
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("seq", BigInteger, nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("queue", String(100), nullable=False),
    Column("priority_class", String(100), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("requests", JSON, nullable=False),
    Column("argv", JSON, nullable=False),
    Column("env", JSON, nullable=False),
    Column("cwd", Text, nullable=False),
    Column("max_retries", Integer, nullable=False),
    Column("state", String(20), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("preemptions", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("admission", JSON, nullable=True),
    Column("executor", String(200), nullable=False),
    Column("handle", String(200), nullable=False),
    Column("exit_code", Integer, nullable=True),
    Column("log_tail", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("admitted_at", Float, nullable=True),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
)
job_events = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(80), ForeignKey("jobs.id"), nullable=False),
    Column("at", Float, nullable=False),
    Column("from_state", String(20), nullable=True),
    Column("to_state", String(20), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("reason", Text, nullable=False),
)
job_lease = Table(
    "job_lease",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("expires_at", Float, nullable=False),
)

_SUFFIX = string.ascii_lowercase + string.digits


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as stored. ``attempt`` counts starts (1 for the first); ``failures`` the
    attempts that failed (retried while ``failures <= max_retries``); ``preemptions`` those
    stopped to free quota (they resume and do not count as failures)."""

    id: str
    name: str
    kind: str
    queue: str
    priority_class: str
    priority: int
    requests: dict[str, float]
    argv: list[str]
    cwd: str
    max_retries: int
    created_at: float
    env: dict[str, str] = field(default_factory=dict)
    state: JobState = JobState.PENDING
    attempt: int = 0
    failures: int = 0
    preemptions: int = 0
    reason: str = ""
    admission: dict[str, Any] | None = None
    executor: str = ""
    handle: str = ""
    exit_code: int | None = None
    log_tail: list[str] = field(default_factory=list)
    admitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0

    @classmethod
    def new(cls, *, name: str, now: float, **fields: Any) -> JobRecord:
        """A pending job with a fresh id: its name and a random suffix, as Kubernetes names
        its pods."""
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ValidationError(f"job name {name!r} is invalid: use letters, digits, '-', '_'")
        suffix = "".join(secrets.choice(_SUFFIX) for _ in range(5))
        return cls(id=f"{name[:60]}-{suffix}", name=name, created_at=now, updated_at=now, **fields)


@dataclass(frozen=True, slots=True)
class JobEvent:
    job_id: str
    at: float
    from_state: str | None
    to_state: str
    attempt: int
    reason: str


_COLUMNS = [c.name for c in jobs.columns if c.name != "seq"]


class JobStore:
    """Jobs in the registry's database (``sqlite:///…`` or ``postgresql://…``)."""

    def __init__(self, url_or_engine: str | Engine) -> None:
        from keel.registry.db import make_engine, migrate

        if isinstance(url_or_engine, str):
            self.engine = make_engine(url_or_engine)
            migrate(self.engine)
        else:
            self.engine = url_or_engine

    # -- writes ---------------------------------------------------------------------------
    def add(self, job: JobRecord) -> JobRecord:
        """Store a new pending job."""
        if job.state is not JobState.PENDING:
            raise ValidationError(f"job {job.id!r}: a new job is pending, not {job.state}")
        row = _row(job)
        with self.engine.begin() as conn:
            seq = conn.execute(select(func.coalesce(func.max(jobs.c.seq), 0))).scalar_one() + 1
            conn.execute(insert(jobs).values(seq=seq, **row))
            conn.execute(
                insert(job_events).values(
                    job_id=job.id,
                    at=job.created_at,
                    from_state=None,
                    to_state=JobState.PENDING.value,
                    attempt=0,
                    reason="submitted",
                )
            )
        return job

    def move(
        self,
        job_id: str,
        to: JobState,
        *,
        now: float,
        expect: JobState | None = None,
        reason: str | None = None,
        **fields: Any,
    ) -> JobRecord:
        """Change a job's state (and any of its fields) if the transition is allowed and the
        job is still in the state it was read in (``expect``, default: its current one).

        Raises :class:`~keel.errors.ConflictError` when another writer moved it first.
        """
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValidationError(f"jobs have no field {sorted(unknown)[0]!r}")
        with self.engine.begin() as conn:
            current = self._get(conn, job_id)
            start = expect or current.state
            if current.state is not start:
                raise ConflictError(
                    f"job {job_id!r} is {current.state}, not {start}: another writer moved it"
                )
            if to not in TRANSITIONS[start]:
                allowed = ", ".join(sorted(TRANSITIONS[start])) or "nothing (it has finished)"
                raise ConflictError(
                    f"job {job_id!r} is {start}: it can move to {allowed}, not {to}"
                )
            values: dict[str, Any] = {"state": to.value, "updated_at": now, **fields}
            if reason is not None:
                values["reason"] = reason
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == start.value)
                .values(**values)
            )
            if done.rowcount != 1:
                raise ConflictError(f"job {job_id!r} was moved by another writer")
            conn.execute(
                insert(job_events).values(
                    job_id=job_id,
                    at=now,
                    from_state=start.value,
                    to_state=to.value,
                    attempt=values.get("attempt", current.attempt),
                    reason=reason if reason is not None else current.reason,
                )
            )
            return self._get(conn, job_id)

    def set_reason(self, reasons: dict[str, str], *, now: float) -> None:
        """Record why pending jobs still wait (no state change, so no event)."""
        if not reasons:
            return
        with self.engine.begin() as conn:
            for job_id, reason in reasons.items():
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.state == JobState.PENDING.value)
                    .values(reason=reason, updated_at=now)
                )

    # -- reads ----------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        with self.engine.connect() as conn:
            return self._get(conn, job_id)

    def list(
        self, states: list[JobState] | None = None, *, queue: str | None = None, limit: int = 0
    ) -> list[JobRecord]:
        """Jobs in submission order (newest last), optionally of some states or one queue."""
        query = select(*[jobs.c[c] for c in _COLUMNS]).order_by(jobs.c.seq)
        if states:
            query = query.where(jobs.c.state.in_([s.value for s in states]))
        if queue:
            query = query.where(jobs.c.queue == queue)
        if limit:
            query = query.order_by(None).order_by(jobs.c.seq.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = [_record(r._mapping) for r in conn.execute(query)]
        return sorted(rows, key=lambda j: (j.created_at, j.id)) if limit else rows

    # From here on in the class body ``list`` names the method above, so annotations spell out
    # the builtin.
    def unfinished(self) -> builtins.list[JobRecord]:
        return self.list([s for s in JobState if not s.finished])

    def last_seq(self) -> int:
        """The submission number of the newest job (0 with none)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(jobs.c.seq), 0))).scalar_one())

    def submitted_after(self, seq: int) -> builtins.list[tuple[int, JobRecord]]:
        """Jobs submitted after submission number ``seq``, with their numbers, oldest first."""
        query = select(jobs.c.seq, *[jobs.c[c] for c in _COLUMNS]).where(jobs.c.seq > seq)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(jobs.c.seq)).all()
        return [(row.seq, _record({c: row._mapping[c] for c in _COLUMNS})) for row in rows]

    def cancelled_since(self, at: float) -> builtins.list[tuple[str, JobState]]:
        """Jobs cancelled, or asked to stop for good, at or after ``at``."""
        query = select(jobs.c.id, jobs.c.state).where(
            jobs.c.state.in_([JobState.CANCELLED.value, JobState.CANCELLING.value]),
            jobs.c.updated_at >= at,
        )
        with self.engine.connect() as conn:
            return [(row.id, JobState(row.state)) for row in conn.execute(query)]

    def events(self, job_id: str) -> builtins.list[JobEvent]:
        query = select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
        with self.engine.connect() as conn:
            return [
                JobEvent(r.job_id, r.at, r.from_state, r.to_state, r.attempt, r.reason)
                for r in conn.execute(query)
            ]

    def resolve(self, ref: str) -> JobRecord:
        """A job by id, or by a unique prefix of it."""
        with self.engine.connect() as conn:
            escaped = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = conn.execute(
                select(jobs.c.id).where(jobs.c.id.like(escaped + "%", escape="\\"))
            ).all()
            if len(rows) == 1:
                return self._get(conn, rows[0].id)
            if not rows:
                known = [r.id for r in conn.execute(select(jobs.c.id).limit(1000))]
                raise NotFoundError(f"no job {ref!r}{did_you_mean(ref, known)}")
        raise ValidationError(f"{ref!r} names {len(rows)} jobs; give more of the id")

    # -- one scheduler at a time ----------------------------------------------------------
    def acquire_lease(self, holder: str, *, now: float, ttl: float) -> bool:
        """Take or renew the scheduler's lease; False while another live holder has it."""
        with self.engine.begin() as conn:
            row = conn.execute(select(job_lease).where(job_lease.c.name == "scheduler")).first()
            if row is None:
                conn.execute(
                    insert(job_lease).values(name="scheduler", holder=holder, expires_at=now + ttl)
                )
                return True
            if row.holder != holder and row.expires_at > now:
                return False
            conn.execute(
                update(job_lease)
                .where(job_lease.c.name == "scheduler")
                .values(holder=holder, expires_at=now + ttl)
            )
            return True

    def release_lease(self, holder: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(job_lease)
                .where(job_lease.c.name == "scheduler", job_lease.c.holder == holder)
                .values(expires_at=0.0)
            )

    def _get(self, conn: Any, job_id: str) -> JobRecord:
        row = conn.execute(
            select(*[jobs.c[c] for c in _COLUMNS]).where(jobs.c.id == job_id)
        ).first()
        if row is None:
            raise NotFoundError(f"no job {job_id!r}")
        return _record(row._mapping)


def _row(job: JobRecord) -> dict[str, Any]:
    row = {c: getattr(job, c) for c in _COLUMNS}
    row["state"] = job.state.value
    return row


def _record(row: Any) -> JobRecord:
    values = dict(row)
    values["state"] = JobState(values["state"])
    return JobRecord(**values)
