"""Demo step: jobs under Kueue's semantics. A retrain of the fraud model runs as a job; a
fine-tune of the recommender arrives at a higher priority, the retrain is sent SIGTERM (a
Keel trainer checkpoints at the step it reached and exits 143) and requeued, the fine-tune
runs, and the retrain resumes and finishes with the very model an uninterrupted run gives
(its lineage retrains it to the same bytes)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from keel.demo.data_steps import progress_bar
from keel.demo.result import DemoResult
from keel.project import Project

PROFILE = {"cpu": 2, "memory": "2Gi"}  # each asks the whole training queue's cpu
TIMEOUT_S = 600.0


def show_jobs(console: Console, project: Project, result: DemoResult) -> None:
    from keel.jobs.queues import snapshot
    from keel.jobs.spec import format_quantity
    from keel.jobs.store import JobState
    from keel.jobs.utilization import open_watch

    cfg = project.settings.jobs
    console.print(
        "[bold]13. Jobs[/]: admitted by queue, quota and priority as Kueue admits them; "
        f"run as subprocesses ({project.settings.jobs_url})"
    )
    for cq in cfg.cluster_queues:
        quotas = ", ".join(
            f"{r} {format_quantity(r, float(q.nominal))}"
            + (
                f" (+{format_quantity(r, float(q.borrowing_limit))} borrowable)"
                if q.borrowing_limit
                else ""
            )
            for g in cq.resource_groups
            for f in g.flavors
            for r, q in f.resources.items()
        )
        console.print(
            f"   cluster queue {cq.name} (cohort {cq.cohort or '—'}): {quotas}; preempts "
            f"{cq.preemption.within_cluster_queue} within, reclaims "
            f"{cq.preemption.reclaim_within_cohort} in the cohort"
        )
    manager = project.job_manager(grace_s=60.0)
    started = time.perf_counter()
    try:
        retrain = manager.submit(project.job("retrain", "fraud", requests=PROFILE))
        huge = manager.submit(
            project.job("train", "fraud", name="train-fraud-huge", requests={"cpu": 64})
        )
        with progress_bar(console) as progress:
            task = progress.add_task("retrain fraud starting", total=None)
            _until(manager, lambda: manager.store.get(retrain.id).state is JobState.RUNNING)
            # The fine-tune arrives once the retrain is under way: past its start-up, into
            # building its training set or fitting.
            log = project.settings.data_dir + f"/jobs/{retrain.id}/1/log"
            _until(manager, lambda: _has(log, "training set"), timeout=60.0, required=False)
            fine = manager.submit(project.job("fine-tune", "recommend", requests=PROFILE))
            progress.update(task, description="fine-tune recommend arrives")
            waiting = _until(manager, lambda: _reason_if_waiting(manager, fine.id))
            snap = snapshot(cfg, manager.store)
            progress.update(task, description="fine-tune recommend running")
            _until(manager, lambda: manager.store.get(fine.id).state.finished)
            progress.update(task, description="retrain fraud resuming")
            _until(manager, lambda: manager.store.get(retrain.id).state.finished)
        huge_reason = manager.store.get(huge.id).reason
        manager.cancel(huge.id)
        manager.tick()
    finally:
        manager.close()
    seconds = time.perf_counter() - started
    jobs = [manager.store.get(j) for j in (retrain.id, fine.id, huge.id)]
    _jobs_table(console, manager, jobs)
    console.print(f"   while it waited, the fine-tune's reason: [yellow]{waiting}[/]")
    first = _stopped(project.settings.data_dir + f"/jobs/{retrain.id}/1/log")
    console.print(f"   the retrain's first attempt, on SIGTERM: {first}")
    _usage(console, snap)
    console.print(f"   asking 64 cpus, [yellow]{huge.id}[/] waited: {huge_reason}; cancelled")
    done = jobs[0]
    result.jobs_states = {j.kind: j.state.value for j in jobs}
    result.jobs_preemptions = done.preemptions
    result.jobs_too_big_reason = huge_reason
    result.jobs_seconds = seconds
    if done.state is JobState.SUCCEEDED:
        from keel.controller.loop import version_of
        from keel.training import reproduce_model

        version = version_of(project.registry, "fraud", done.id)
        with console.status(f"   retraining {version.ref} from its lineage…"):
            rep = reproduce_model(project.registry, project.features, "fraud", version.version)
        result.jobs_resumed_identical = rep.identical
        console.print(
            f"   the preempted retrain registered {version.ref}; retrained "
            f"from its lineage without interruption: "
            + (
                "[green]byte-identical[/]"
                if result.jobs_resumed_identical
                else "[red]different bytes[/]"
            )
        )
    watch = open_watch(cfg.utilization)
    try:
        console.print(f"   accelerator watch: {watch.summary()}")
    finally:
        watch.close()  # lets NVML go where there is a device


def _stopped(path: str) -> str:
    """What the first attempt's log says of how it stopped."""
    try:
        with open(path, errors="replace") as fh:
            lines = [line.strip() for line in fh if "preempted" in line]
    except OSError:
        return "no log"
    return lines[-1] if lines else "stopped before its first step (nothing to checkpoint yet)"


def _has(path: str, text: str) -> bool:
    try:
        with open(path, errors="replace") as fh:
            return text in fh.read()
    except OSError:
        return False


def _reason_if_waiting(manager: Any, job_id: str) -> str | None:
    job = manager.store.get(job_id)
    return job.reason if job.state.value == "pending" and "preemption" in job.reason else None


def _until(manager: Any, check: Any, *, timeout: float = TIMEOUT_S, required: bool = True) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manager.tick()
        value = check()
        if value:
            return value
        time.sleep(0.1)
    if required:
        raise TimeoutError(f"the demo's jobs did not get there within {timeout:g} s")
    return None


def _jobs_table(console: Console, manager: Any, jobs: list[Any]) -> None:
    table = Table(title="   jobs", title_justify="left")
    for col in ("job", "priority", "attempts", "history", "state"):
        table.add_column(col, overflow="fold")
    for j in jobs:
        events = manager.store.events(j.id)
        history = " → ".join(e.to_state for e in events)
        colour = {"succeeded": "green", "failed": "red"}.get(j.state.value, "yellow")
        table.add_row(
            j.id,
            f"{j.priority_class} ({j.priority})",
            f"{j.attempt}" + (f" ({j.preemptions} preempted)" if j.preemptions else ""),
            history,
            f"[{colour}]{j.state.value}[/]",
        )
    console.print(table)


def _usage(console: Console, snap: Any) -> None:
    rows = []
    for q in snap.queues:
        for r in q.resources:
            if r.resource == "cpu":
                rows.append(
                    f"{q.name} {r.used:g}/{r.nominal:g} cpu"
                    + (f" ({r.borrowed:g} borrowed)" if r.borrowed else "")
                )
    console.print(f"   usage then: {'; '.join(rows)}; {len(snap.waiting)} pending")
