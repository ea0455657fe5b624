"""The job manager: admits stored jobs with the Kueue-style scheduler, runs them on an
executor, preempts gracefully and retries by policy.

One manager at a time holds the scheduler's lease in the database; ``keel jobs submit`` and
``keel jobs cancel`` only write rows, which the manager picks up on its next tick. Each tick:

1. reads jobs submitted or cancelled since the last one;
2. polls running attempts: a success finishes the job; a stop it asked for (SIGTERM, exit
   143) requeues it to resume from its checkpoint; a failure is retried while
   ``failures <= max_retries``, then the job fails with its last log lines;
3. runs a scheduling cycle: evictions are sent SIGTERM (and SIGKILL after ``grace_s``),
   admitted jobs start on the executor.

A restarted manager rebuilds the scheduler from the stored jobs: admitted ones hold their
quota again, running ones are re-attached through their attempt's status files, and an
attempt that died while nobody watched is handled by the retry policy, never started twice.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel.clock import Clock, SystemClock
from keel.errors import ConflictError, KeelError, ValidationError
from keel.jobs import worker
from keel.jobs.admission import Scheduler, Workload
from keel.jobs.executors import Attempt, Executor, Outcome
from keel.jobs.queues import admission, workload
from keel.jobs.spec import CPU, MEMORY, JobsConfig, parse_requests
from keel.jobs.store import JobRecord, JobState, JobStore

__all__ = ["KINDS", "KIND_PRIORITY", "JobManager", "JobSpec", "TickReport", "keel_argv"]

logger = logging.getLogger(__name__)

#: What Keel runs as jobs, and the priority class each takes unless told otherwise.
KIND_PRIORITY = {
    "train": "training",
    "retrain": "retrain",
    "fine-tune": "fine-tune",
    "training-set": "training",
    "materialize": "backfill",
    "backfill": "backfill",
    "monitor": "monitor",
    "command": None,  # the configured default
}
KINDS = tuple(KIND_PRIORITY)
DEFAULT_REQUESTS: dict[str, float | str] = {CPU: 1, MEMORY: "1Gi"}
PREEMPTED_EXIT = 143  # 128 + SIGTERM: the run checkpointed and stopped when asked
LEASE_TTL_S = 15.0


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What to run, and with what: ``argv`` is the command; ``requests`` its resource profile
    (quantities such as ``"4Gi"`` allowed; default 1 cpu and 1 GiB)."""

    name: str
    argv: list[str]
    kind: str = "command"
    queue: str | None = None
    priority: str | None = None
    requests: dict[str, float | str] = field(default_factory=dict)
    max_retries: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


def keel_argv(config_path: str, kind: str, target: str | None, *, now: float) -> list[str]:
    """The ``keel`` command line that runs a job of ``kind`` on ``target`` (a model or a
    route). Training and fine-tuning are pinned to the submit time, so a preempted run
    resumes on the very same data."""
    from datetime import UTC, datetime

    until = datetime.fromtimestamp(now, UTC).isoformat()
    base = [sys.executable, "-m", "keel", "-c", config_path]
    needs = {"train", "retrain", "fine-tune", "training-set", "monitor"}
    if kind in needs and not target:
        raise ValidationError(f"a {kind} job needs a target: keel jobs submit {kind} NAME")
    if kind not in needs and target:
        raise ValidationError(f"a {kind} job works on every feature view; it takes no {target!r}")
    match kind:
        case "train":
            return [*base, "train", str(target), "--until", until]
        case "retrain":
            # Registered, not shadowed: the loop grades a retrain before it is a challenger.
            return [*base, "train", str(target), "--until", until]
        case "fine-tune":
            return [*base, "fine-tune", str(target), "--until", until]
        case "training-set":
            return [*base, "features", "training-set", str(target), "--until", until]
        case "materialize":
            return [*base, "features", "materialize"]
        case "backfill":
            return [*base, "features", "backfill"]
        case "monitor":
            return [*base, "monitor", "--route", str(target), "--once"]
    raise ValidationError(
        f"unknown job kind {kind!r}; known: {', '.join(k for k in KINDS if k != 'command')}, "
        "or a command after --"
    )


@dataclass(slots=True)
class TickReport:
    """What one tick did, by job id."""

    admitted: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    preempting: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    finished: dict[str, JobState] = field(default_factory=dict)
    leader: bool = True


class JobManager:
    """Runs stored jobs under the scheduler.

    Parameters
    ----------
    config
        Flavors, queues and priority classes (``keel.toml``'s ``[jobs]``).
    store
        Where jobs live (the registry's database).
    executor
        Where attempts run (``local://`` subprocesses or a ``dask://`` cluster).
    run_root
        Each attempt's folder (log, pid and exit files) is ``run_root/<job>/<attempt>``.
    grace_s
        How long a job asked to stop may take to checkpoint before it is killed.
    """

    def __init__(
        self,
        config: JobsConfig,
        store: JobStore,
        executor: Executor,
        *,
        run_root: str | os.PathLike[str],
        clock: Clock | None = None,
        grace_s: float = 30.0,
        holder: str | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.executor = executor
        self.run_root = Path(run_root)
        self.clock = clock or SystemClock()
        self.grace_s = grace_s
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.scheduler: Scheduler | None = None
        self._active: dict[str, JobRecord] = {}  # holding quota, by id
        self._stopping: dict[str, float] = {}  # asked to stop, when
        self._reasons: dict[str, str] = {}
        self._seen_seq = 0
        self._known: set[str] = set()
        self._last_sync = 0.0
        self._last_cancel_check = 0.0

    # -- what clients call ----------------------------------------------------------------
    def submit(self, spec: JobSpec) -> JobRecord:
        """Validate and store a job; it waits for the next tick to be admitted."""
        return submit(self.config, self.store, spec, now=self.clock.now())

    def cancel(self, job_id: str) -> JobRecord:
        return cancel(self.store, job_id, now=self.clock.now())

    # -- the loop -------------------------------------------------------------------------
    def tick(self) -> TickReport:
        now = self.clock.now()
        report = TickReport()
        if now - self._last_sync >= 1.0 or self.scheduler is None:
            if not self.store.acquire_lease(self.holder, now=now, ttl=LEASE_TTL_S):
                self.scheduler = None
                report.leader = False
                return report
            self._last_sync = now
        if self.scheduler is None:
            self._recover()
        self._sync(report)
        self._poll(report)
        self._schedule(report)
        return report

    def run(self, stop: threading.Event, *, interval: float = 0.1) -> None:
        """Tick until ``stop`` is set; give the lease back on the way out."""
        try:
            while not stop.is_set():
                self.tick()
                stop.wait(interval)
        finally:
            self.store.release_lease(self.holder)

    def wait(self, job_id: str, *, timeout: float = 600.0, interval: float = 0.05) -> JobRecord:
        """Tick until ``job_id`` has finished (for scripts and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            job = self.store.get(job_id)
            if job.state.finished:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:g} s")
            time.sleep(interval)

    def processes(self) -> dict[int, tuple[str, str | None]]:
        """The commands running now, by pid: their job's id (and no route), so the
        utilization watch can say which job a device's process belongs to."""
        out: dict[int, tuple[str, str | None]] = {}
        for job_id, job in list(self._active.items()):  # a copy: tick() may change it
            if job.state is JobState.ADMITTED or not job.attempt:
                continue
            try:
                record = worker.read_record(self._attempt(job, job.attempt).run_dir, worker.PID)
            except (OSError, ValueError):  # being rewritten, or unreadable
                continue
            pid = (record or {}).get("child_pid")
            if pid:
                out[int(pid)] = (job_id, None)
        return out

    def close(self) -> None:
        self.store.release_lease(self.holder)
        self.executor.close()

    # -- internals ------------------------------------------------------------------------
    @property
    def _scheduler(self) -> Scheduler:
        if self.scheduler is None:
            raise ConflictError("this manager does not hold the scheduler's lease")
        return self.scheduler

    def _recover(self) -> None:
        """Rebuild the scheduler from the stored jobs (a start, or a restart)."""
        self.scheduler = Scheduler(self.config)
        # Read first: a job submitted while the rest is read is then picked up by _sync
        # (the known set keeps one read twice from being submitted twice).
        self._seen_seq = self.store.last_seq()
        self._active.clear()
        self._reasons.clear()
        self._known.clear()
        self._stopping.clear()
        for job in self.store.unfinished():
            self._known.add(job.id)
            if job.state is JobState.PENDING:
                self._scheduler.submit(workload(job))
                continue
            wl = workload(job)
            if job.state is JobState.ADMITTED:
                started = self._attempt(job, job.attempt + 1)
                run_dir = Path(started.run_dir)
                if not any((run_dir / name).exists() for name in (worker.PID, worker.HANDLE)):
                    # Admitted, never started: it waits for the next cycle again.
                    self.store.move(
                        job.id,
                        JobState.PENDING,
                        now=self.clock.now(),
                        reason="requeued: the scheduler restarted before it started",
                    )
                    self._scheduler.submit(wl)
                    continue
                # Started, not yet recorded as running.
                job = self.store.move(
                    job.id,
                    JobState.RUNNING,
                    now=self.clock.now(),
                    attempt=started.attempt,
                    reason="re-attached after a restart",
                )
            wl.admission = admission(job)
            wl.evicting = job.state in (JobState.PREEMPTING, JobState.CANCELLING)
            self._scheduler.restore(wl)
            self._active[job.id] = job
            if wl.evicting:
                self._stopping[job.id] = self.clock.now()

    def _sync(self, report: TickReport) -> None:
        """Jobs submitted by others since the last tick, and cancellations."""
        fresh = self.store.submitted_after(self._seen_seq)
        cancelled = self.store.cancelled_since(self._last_cancel_check)
        self._last_cancel_check = self.clock.now() - 5.0
        for seq, job in fresh:
            self._seen_seq = max(self._seen_seq, seq)
            if job.state is JobState.PENDING and job.id not in self._known:
                self._known.add(job.id)
                try:
                    self._scheduler.submit(workload(job))
                except KeelError as exc:  # its queue left the configuration since
                    self._finish(job, JobState.CANCELLED, reason=str(exc), report=report)
        for job_id, state in cancelled:
            if job_id not in self._known:
                continue
            if state is JobState.CANCELLED:  # pending or not yet started
                self._known.discard(job_id)
                self._reasons.pop(job_id, None)
                self._active.pop(job_id, None)
                self._scheduler.release(job_id)
            elif state is JobState.CANCELLING and job_id not in self._stopping:
                job = self.store.get(job_id)
                self._active[job_id] = job
                self._stop(job)

    def _poll(self, report: TickReport) -> None:
        now = self.clock.now()
        for job_id, job in list(self._active.items()):
            if job.state is JobState.ADMITTED:
                continue
            attempt = self._attempt(job, job.attempt)
            outcome = self.executor.poll(attempt)
            if outcome is None:
                asked = self._stopping.get(job_id)
                if asked is not None and now - asked > self.grace_s:
                    logger.warning(
                        "job %s did not stop within %g s: killing it", job_id, self.grace_s
                    )
                    self.executor.kill(attempt)
                continue
            self._ended(job, outcome, report)

    def _ended(self, job: JobRecord, outcome: Outcome, report: TickReport) -> None:
        current = self.store.get(job.id)
        tail = list(outcome.log_tail)
        fields = {"exit_code": outcome.exit_code, "log_tail": tail}
        self._stopping.pop(job.id, None)
        if current.state is JobState.CANCELLING:
            self._finish(current, JobState.CANCELLED, reason="cancelled", report=report, **fields)
        elif outcome.exit_code == 0:
            self._finish(current, JobState.SUCCEEDED, reason="succeeded", report=report, **fields)
        elif outcome.preempted or outcome.exit_code == PREEMPTED_EXIT:
            why = (
                "preempted: checkpointed and requeued to resume"
                if current.state is JobState.PREEMPTING
                else f"stopped by SIGTERM (exit {outcome.exit_code}): requeued to resume"
            )
            self._requeue(current, why, report, preemptions=current.preemptions + 1, **fields)
        else:
            failures = current.failures + 1
            what = f"attempt {current.attempt} failed (exit {outcome.exit_code})"
            if failures <= current.max_retries:
                why = f"{what}; retry {failures} of {current.max_retries}"
                self._requeue(current, why, report, failures=failures, **fields)
            else:
                last = f": {tail[-1]}" if tail else ""
                self._finish(
                    current,
                    JobState.FAILED,
                    reason=f"{what}, no retries left{last}",
                    report=report,
                    failures=failures,
                    **fields,
                )

    def _requeue(self, job: JobRecord, why: str, report: TickReport, **fields: Any) -> None:
        self.store.move(job.id, JobState.PENDING, now=self.clock.now(), reason=why, **fields)
        self._active.pop(job.id, None)
        self._scheduler.requeue(job.id)
        report.requeued.append(job.id)

    def _finish(
        self, job: JobRecord, to: JobState, *, reason: str, report: TickReport, **fields: Any
    ) -> None:
        self.store.move(
            job.id, to, now=self.clock.now(), reason=reason, finished_at=self.clock.now(), **fields
        )
        self._active.pop(job.id, None)
        self._known.discard(job.id)
        self._reasons.pop(job.id, None)
        if job.state is not JobState.PENDING or job.id in self._known:
            self._scheduler.release(job.id)
        report.finished[job.id] = to

    def _schedule(self, report: TickReport) -> None:
        now = self.clock.now()
        cycle = self._scheduler.cycle(now)
        for ev in cycle.evictions:
            job = self._active.get(ev.victim) or self.store.get(ev.victim)
            why = f"preempted by {ev.by} ({ev.reason})"
            if job.state is JobState.ADMITTED:  # not started: back to waiting at once
                self._requeue(job, why, report)
                continue
            try:
                job = self.store.move(job.id, JobState.PREEMPTING, now=now, reason=why)
            except ConflictError:
                continue  # finished meanwhile: the next poll releases it
            self._active[job.id] = job
            self._stop(job)
            report.preempting.append(job.id)
        for wl in cycle.admitted:
            self._start(wl, report)
        changed = {k: v for k, v in cycle.pending.items() if self._reasons.get(k) != v}
        self._reasons.update(changed)
        self.store.set_reason(changed, now=now)

    def _start(self, wl: Workload, report: TickReport) -> None:
        now = self.clock.now()
        if wl.admission is None:
            raise ConflictError(f"job {wl.id} was handed over as admitted without an admission")
        where = {
            "cluster_queue": wl.admission.cluster_queue,
            "flavors": dict(wl.admission.flavors),
            "at": wl.admission.at,
        }
        flavors = ", ".join(f"{r} in {f}" for r, f in sorted(wl.admission.flavors.items()))
        try:
            job = self.store.move(
                wl.id,
                JobState.ADMITTED,
                now=now,
                expect=JobState.PENDING,
                admission=where,
                admitted_at=now,
                reason=f"admitted by {wl.admission.cluster_queue}"
                + (f" ({flavors})" if flavors else ""),
            )
        except ConflictError:  # cancelled between the sync and now
            self._scheduler.release(wl.id)
            return
        report.admitted.append(job.id)
        self._active[job.id] = job
        attempt = self._attempt(job, job.attempt + 1)
        try:
            handle = self.executor.start(attempt)
        except KeelError as exc:
            self._finish(job, JobState.FAILED, reason=f"could not start: {exc}", report=report)
            return
        self._active[job.id] = self.store.move(
            job.id,
            JobState.RUNNING,
            now=self.clock.now(),
            attempt=attempt.attempt,
            handle=handle,
            executor=type(self.executor).__name__,
            started_at=self.clock.now(),
            reason=f"running attempt {attempt.attempt}",
        )
        report.started.append(job.id)

    def _stop(self, job: JobRecord) -> None:
        self._stopping[job.id] = self.clock.now()
        if job.attempt:
            self.executor.terminate(self._attempt(job, job.attempt))

    def _attempt(self, job: JobRecord, number: int) -> Attempt:
        return Attempt(
            job_id=job.id,
            attempt=number,
            argv=list(job.argv),
            env=dict(job.env),
            cwd=job.cwd,
            requests=dict(job.requests),
            run_dir=str(self.run_root / job.id / str(number)),
        )


def submit(config: JobsConfig, store: JobStore, spec: JobSpec, *, now: float) -> JobRecord:
    """Check a job against the configuration and store it as pending."""
    if spec.kind not in KINDS:
        raise ValidationError(f"unknown job kind {spec.kind!r}; known: {', '.join(KINDS)}")
    if not spec.argv:
        raise ValidationError(f"job {spec.name!r} has no command")
    queue = spec.queue or config.default_queue
    config.cluster_queue_of(queue)  # an unknown queue is refused here, not left pending
    priority_class = spec.priority or KIND_PRIORITY[spec.kind] or config.default_priority
    priority = config.priority(priority_class)
    requests = parse_requests(spec.requests or DEFAULT_REQUESTS, f"job {spec.name}")
    retries = config.max_retries if spec.max_retries is None else spec.max_retries
    if retries < 0:
        raise ValidationError(f"max_retries must be >= 0, got {retries}")
    job = JobRecord.new(
        name=spec.name,
        now=now,
        kind=spec.kind,
        queue=queue,
        priority_class=priority_class,
        priority=priority,
        requests=requests,
        argv=[str(a) for a in spec.argv],
        env=dict(spec.env),
        cwd=spec.cwd or os.getcwd(),
        max_retries=retries,
        reason="waiting for the scheduler",
    )
    return store.add(job)


def cancel(store: JobStore, job_id: str, *, now: float) -> JobRecord:
    """Cancel a job: a pending one at once, a running one by asking it to stop."""
    job = store.resolve(job_id)
    if job.state.finished:
        raise ConflictError(f"job {job.id} has already {job.state}")
    if job.state is JobState.PENDING:
        return store.move(job.id, JobState.CANCELLED, now=now, reason="cancelled", finished_at=now)
    if job.state is JobState.CANCELLING:
        return job
    target = JobState.CANCELLED if job.state is JobState.ADMITTED else JobState.CANCELLING
    return store.move(job.id, target, now=now, reason="cancel requested")
