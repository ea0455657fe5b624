"""``keel jobs …`` and ``keel queues``: submit, watch and cancel jobs; queue usage."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from keel.cli._common import console, friendly, project

app = typer.Typer(help="Jobs admitted by queues, quotas and priorities, as Kueue admits them.")

_STATE_STYLE = {
    "pending": "yellow",
    "admitted": "cyan",
    "running": "cyan",
    "preempting": "magenta",
    "cancelling": "magenta",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "dim",
}


def _when(t: float | None) -> str:
    return "—" if t is None else datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M:%S")


def _state(s: str) -> str:
    return f"[{_STATE_STYLE.get(s, 'white')}]{s}[/]"


def _requests(requests: dict[str, float]) -> str:
    from keel.jobs.spec import MEMORY

    parts = []
    for name, amount in sorted(requests.items()):
        if name == MEMORY:
            parts.append(f"{name} {amount / 2**30:g}Gi")
        else:
            parts.append(f"{name} {amount:g}")
    return ", ".join(parts) or "nothing"


@app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def submit(
    ctx: typer.Context,
    kind: str = typer.Argument(
        ...,
        help="train, retrain, fine-tune, training-set, materialize, backfill, monitor, or "
        "command (the command after --)",
    ),
    target: str | None = typer.Argument(None, help="the model or route it works on"),
    queue: str | None = typer.Option(None, "--queue", "-q", help="local queue (default: default)"),
    priority: str | None = typer.Option(None, "--priority", "-p", help="priority class"),
    cpu: str | None = typer.Option(None, help="cpu cores, e.g. 2 or 500m"),
    memory: str | None = typer.Option(None, help="memory, e.g. 4Gi"),
    gpu: int | None = typer.Option(None, help="NVIDIA GPUs (nvidia.com/gpu)"),
    request: list[str] = typer.Option(
        None, "--request", "-r", help="another resource: NAME=QUANTITY (repeatable)"
    ),
    retries: int | None = typer.Option(None, help="retries after a failure"),
    name: str | None = typer.Option(None, help="job name (default: kind-target)"),
    wait: bool = typer.Option(False, help="run the scheduler here until the job finishes"),
) -> None:
    """Submit a job; it waits in its queue until quota admits it."""
    proj = project(ctx)
    extra = list(ctx.args)
    requests: dict[str, Any] = {}
    for key, value in (("cpu", cpu), ("memory", memory), ("nvidia.com/gpu", gpu)):
        if value is not None:
            requests[key] = value
    for item in request or []:
        res, sep, qty = item.partition("=")
        if not sep:
            raise typer.BadParameter(
                f"--request {item!r}: give NAME=QUANTITY, e.g. example.com/tpu=1"
            )
        requests[res] = qty
    if kind == "command":
        if not extra:
            raise typer.BadParameter(
                "a command job runs what follows --: keel jobs submit command -- CMD"
            )
        spec = proj.job(
            "command",
            argv=extra,
            name=name or Path(extra[0]).name,
            queue=queue,
            priority=priority,
            requests=requests,
            max_retries=retries,
        )
    else:
        if extra:
            raise typer.BadParameter(f"unexpected arguments {' '.join(extra)!r}")
        spec = proj.job(
            kind,
            target,
            name=name,
            queue=queue,
            priority=priority,
            requests=requests,
            max_retries=retries,
        )
    manager = proj.job_manager() if wait else None
    job = manager.submit(spec) if manager else _submit(proj, spec)
    console.print(
        f"submitted [bold]{job.id}[/] to queue {job.queue} at priority {job.priority_class} "
        f"({job.priority}), asking {_requests(job.requests)}"
    )
    if manager is not None:
        try:
            done = manager.wait(job.id, timeout=7 * 86_400)
        finally:
            manager.close()
        console.print(f"{done.id} {_state(done.state.value)}: {done.reason}")
        if done.state.value != "succeeded":
            raise typer.Exit(1)


def _submit(proj: Any, spec: Any) -> Any:
    from keel.jobs.manager import submit as store_submit

    return store_submit(proj.settings.jobs, proj.jobs, spec, now=time.time())


@app.command("list")
@friendly
def list_jobs(
    ctx: typer.Context,
    state: list[str] = typer.Option(None, "--state", "-s", help="only jobs in these states"),
    queue: str | None = typer.Option(None, "--queue", "-q"),
    limit: int = typer.Option(50, help="the newest this many"),
) -> None:
    """Jobs, newest last, with why a pending one waits."""
    from keel.jobs.store import JobState

    proj = project(ctx)
    states = [JobState(s) for s in state] if state else None
    jobs = proj.jobs.list(states, queue=queue, limit=limit)
    table = Table(title=f"jobs ({len(jobs)})", title_justify="left")
    for col in ("id", "kind", "queue", "priority", "state", "attempt", "created", "reason"):
        table.add_column(col, overflow="fold")
    for j in jobs:
        table.add_row(
            j.id,
            j.kind,
            j.queue,
            f"{j.priority_class} ({j.priority})",
            _state(j.state.value),
            str(j.attempt),
            _when(j.created_at),
            j.reason,
        )
    console.print(table)


@app.command("show")
@friendly
def show(ctx: typer.Context, job_id: str = typer.Argument(..., help="id or unique prefix")) -> None:
    """One job: its profile, admission, history and last log lines."""
    proj = project(ctx)
    j = proj.jobs.resolve(job_id)
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    adm = j.admission or {}
    rows = [
        ("job", f"{j.id} ({j.kind}) {_state(j.state.value)}"),
        ("command", " ".join(j.argv)),
        ("queue", f"{j.queue} → {adm.get('cluster_queue', '—')}"),
        ("priority", f"{j.priority_class} ({j.priority})"),
        ("requests", _requests(j.requests)),
        ("flavors", ", ".join(f"{r}: {f}" for r, f in adm.get("flavors", {}).items()) or "—"),
        (
            "attempts",
            f"{j.attempt} ({j.failures} failed, {j.preemptions} preempted; "
            f"{j.max_retries} retries allowed)",
        ),
        ("reason", j.reason),
        ("exit code", "—" if j.exit_code is None else str(j.exit_code)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    history = Table(title="history", title_justify="left")
    for col in ("at", "from", "to", "attempt", "reason"):
        history.add_column(col, overflow="fold")
    for e in proj.jobs.events(j.id):
        history.add_row(
            _when(e.at), e.from_state or "—", _state(e.to_state), str(e.attempt), e.reason
        )
    console.print(history)
    if j.log_tail:
        console.print("[bold]last log lines[/]")
        for line in j.log_tail[-10:]:
            console.print("  " + line, highlight=False, markup=False)


@app.command("cancel")
@friendly
def cancel(
    ctx: typer.Context, job_id: str = typer.Argument(..., help="id or unique prefix")
) -> None:
    """Cancel a job: a pending one at once, a running one by asking it to stop."""
    from keel.jobs.manager import cancel as cancel_job

    j = cancel_job(project(ctx).jobs, job_id, now=time.time())
    console.print(f"{j.id} {_state(j.state.value)}")


@app.command("logs")
@friendly
def logs(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="id or unique prefix"),
    attempt: int | None = typer.Option(None, help="which attempt (default: the last)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until it ends"),
) -> None:
    """A job attempt's output."""
    proj = project(ctx)
    j = proj.jobs.resolve(job_id)
    number = attempt or j.attempt
    if number < 1:
        console.print(f"{j.id} has not started: {j.reason}")
        return
    path = Path(proj.settings.data_dir) / "jobs" / j.id / str(number) / "log"
    if not path.exists():
        console.print(f"no log for attempt {number} of {j.id} at {path}")
        return
    with path.open("r", errors="replace") as fh:
        while True:
            chunk = fh.read()
            if chunk:
                console.out(chunk, end="", highlight=False)
            if not follow or proj.jobs.get(j.id).state.finished:
                if follow:
                    console.out(fh.read(), end="", highlight=False)
                return
            time.sleep(0.5)


@app.command("run")
@friendly
def run(
    ctx: typer.Context,
    seconds: float = typer.Option(0.0, help="stop after this long (0 = until Ctrl-C)"),
    interval: float = typer.Option(0.2, help="seconds between scheduling cycles"),
) -> None:
    """Run the scheduler: admit pending jobs, start them on jobs_url, preempt, retry."""
    proj = project(ctx)
    manager = proj.job_manager()
    stop = threading.Event()
    if seconds:
        threading.Timer(seconds, stop.set).start()
    console.print(f"scheduling jobs on {proj.settings.jobs_url} as {manager.holder} (Ctrl-C stops)")
    try:
        manager.run(stop, interval=interval)
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        manager.close()


def queues(ctx: typer.Context) -> None:
    """Each cluster queue's quota, usage, borrowed and lent, and why jobs wait."""
    from keel.jobs.queues import snapshot

    proj = project(ctx)
    snap = snapshot(proj.settings.jobs, proj.jobs)
    table = Table(title="cluster queues", title_justify="left")
    for col in (
        "queue",
        "cohort",
        "flavor",
        "resource",
        "nominal",
        "used",
        "borrowed",
        "lent",
        "admitted",
        "pending",
    ):
        table.add_column(
            col, justify="right" if col not in ("queue", "cohort", "flavor", "resource") else "left"
        )
    for q in snap.queues:
        first = True
        for r in q.rows:
            fmt = _amount(r.resource)
            table.add_row(
                q.name if first else "",
                (q.cohort or "—") if first else "",
                r.flavor,
                r.resource,
                fmt(r.nominal),
                fmt(r.used),
                fmt(r.borrowed),
                fmt(r.lent),
                str(q.admitted) if first else "",
                str(q.pending) if first else "",
            )
            first = False
    console.print(table)
    if snap.waiting:
        waits = Table(title="pending", title_justify="left")
        for col in ("job", "queue", "priority", "why"):
            waits.add_column(col, overflow="fold")
        for j in snap.waiting:
            waits.add_row(j.id, j.queue, f"{j.priority_class} ({j.priority})", j.reason)
        console.print(waits)


def _amount(resource: str) -> Any:
    from keel.jobs.spec import MEMORY

    if resource == MEMORY:
        return lambda v: f"{v / 2**30:.3g}Gi"
    return lambda v: f"{v:g}"


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="jobs")
    root.command("queues")(friendly(queues))
