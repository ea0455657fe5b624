"""``keel jobs …`` and ``keel queues``: submit, watch and cancel jobs; queue usage."""

from __future__ import annotations

import contextlib
import functools
import re
import shlex
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from keel.cli._common import console, friendly, human_bytes, project
from keel.errors import UnavailableError, ValidationError

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
    from keel.jobs.spec import format_quantity

    parts = [f"{name} {format_quantity(name, v)}" for name, v in sorted(requests.items())]
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
    if kind == "command" and target is not None:
        # Click hands the command's first word to TARGET: it is the program to run.
        extra.insert(0, target)
    elif kind in ("materialize", "backfill") and target is not None:
        raise ValidationError(f"a {kind} job works on every feature view: drop {target!r}")
    requests: dict[str, Any] = {}
    for key, value in (("cpu", cpu), ("memory", memory), ("nvidia.com/gpu", gpu)):
        if value is not None:
            requests[key] = value
    for item in request or []:
        res, sep, qty = item.partition("=")
        if not sep or not res or not qty:
            raise ValidationError(
                f"--request {item!r}: give NAME=QUANTITY, e.g. --request example.com/tpu=1"
            )
        requests[res] = qty
    if kind == "command":
        if not extra:
            raise ValidationError(
                "a command job runs what follows --: keel jobs submit command -- CMD ARGS..."
            )
        spec = proj.job(
            "command",
            argv=extra,
            name=name or _command_name(extra[0]),
            queue=queue,
            priority=priority,
            requests=requests,
            max_retries=retries,
        )
    else:
        if extra:
            raise ValidationError(
                f"unexpected arguments {shlex.join(extra)!r}: only a command job takes a "
                "command (keel jobs submit command -- CMD ARGS...)"
            )
        spec = proj.job(
            kind,
            target,
            name=name,
            queue=queue,
            priority=priority,
            requests=requests,
            max_retries=retries,
        )
    if not wait:
        _submitted(_submit(proj, spec))
        return
    manager = proj.job_manager()
    try:
        job = _submitted(manager.submit(spec))
        # Another scheduler may hold the lease: then this one only watches the job end.
        done = manager.wait(job.id, timeout=7 * 86_400)
    finally:
        manager.close()
    console.print(f"{escape(done.id)} {_state(done.state.value)}: {escape(done.reason)}")
    if done.state.value != "succeeded":
        raise typer.Exit(1)


def _submitted(job: Any) -> Any:
    console.print(
        f"submitted [bold]{escape(job.id)}[/] to queue {escape(job.queue)} at priority "
        f"{escape(job.priority_class)} ({job.priority}), asking {_requests(job.requests)}"
    )
    return job


def _command_name(program: str) -> str:
    """A job name from the program a command job runs: its file name, in the characters a
    job name allows."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(program).name).strip("-.") or "command"


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
    known = [s.value for s in JobState]
    for s in state or []:
        if s not in known:
            raise ValidationError(f"unknown state {s!r}; states: {', '.join(known)}")
    states = [JobState(s) for s in state] if state else None
    jobs = proj.jobs.list(states, queue=queue, limit=limit)
    table = Table(title=f"jobs ({len(jobs)})", title_justify="left")
    for col in ("id", "kind", "queue", "priority", "state", "attempt", "created", "reason"):
        table.add_column(col, overflow="fold")
    for j in jobs:
        table.add_row(
            escape(j.id),
            j.kind,
            escape(j.queue),
            f"{escape(j.priority_class)} ({j.priority})",
            _state(j.state.value),
            str(j.attempt),
            _when(j.created_at),
            escape(j.reason),
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
        ("job", f"{escape(j.id)} ({j.kind}) {_state(j.state.value)}"),
        ("command", escape(shlex.join(j.argv))),
        ("queue", escape(f"{j.queue} → {adm.get('cluster_queue', '—')}")),
        ("priority", f"{escape(j.priority_class)} ({j.priority})"),
        ("requests", _requests(j.requests)),
        ("flavors", ", ".join(f"{r}: {f}" for r, f in adm.get("flavors", {}).items()) or "—"),
        (
            "attempts",
            f"{j.attempt} ({j.failures} failed, {j.preemptions} preempted; "
            f"{j.max_retries} retries allowed)",
        ),
        ("reason", escape(j.reason)),
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
            _when(e.at), e.from_state or "—", _state(e.to_state), str(e.attempt), escape(e.reason)
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
    console.print(f"{escape(j.id)} {_state(j.state.value)}: {escape(j.reason)}")


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
        console.print(f"{escape(j.id)} has not started: {escape(j.reason)}")
        return
    path = Path(proj.settings.data_dir) / "jobs" / j.id / str(number) / "log"
    if not path.exists():
        console.print(f"no log for attempt {number} of {escape(j.id)} at {escape(str(path))}")
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
    metrics_port: int | None = typer.Option(
        None, help="serve the accelerator gauges to Prometheus on 127.0.0.1:PORT"
    ),
) -> None:
    """Run the scheduler: admit pending jobs, start them on jobs_url, preempt, retry; and
    watch the accelerators' utilization while it runs."""
    from keel.jobs.utilization import open_watch, publish_alerts

    if seconds < 0 or interval <= 0:
        raise ValidationError(
            f"--seconds must be >= 0 and --interval > 0, got {seconds:g} and {interval:g}"
        )
    proj = project(ctx)
    stop = threading.Event()
    with contextlib.ExitStack() as cleanup:
        registry = None
        if metrics_port is not None:
            registry, server = _serve_metrics(metrics_port)
            cleanup.callback(server.server_close)
            cleanup.callback(server.shutdown)
        manager = proj.job_manager()
        cleanup.callback(manager.close)
        # The watch asks the manager which job owns a pid from its own thread, while ticks
        # change the manager's running jobs: one lock keeps the two apart.
        lock = threading.Lock()

        def owners() -> dict[int, tuple[str, str | None]]:
            with lock:
                return manager.processes()

        watch = open_watch(
            proj.settings.jobs.utilization,
            registry=registry,
            on_alert=lambda a: publish_alerts(proj.log, [a]),
            jobs=owners,
        )
        cleanup.callback(watch.close)
        if watch.state == "no accelerator":
            console.print(f"utilization watch off — no accelerator: {escape(str(watch.reason))}")
        else:
            watcher = threading.Thread(target=watch.run, args=(stop,), name="keel-utilization")
            watcher.start()
            cleanup.callback(watcher.join)
            console.print(f"watching accelerator utilization every {watch.config.interval_s:g} s")
        if seconds > 0:
            timer = threading.Timer(seconds, stop.set)
            timer.start()
            cleanup.callback(timer.cancel)
        cleanup.callback(stop.set)  # runs first on the way out (Ctrl-C, an error): ends the watch
        console.print(
            f"scheduling jobs on {escape(proj.settings.jobs_url)} as {escape(manager.holder)} "
            "(Ctrl-C stops)"
        )
        try:
            while not stop.is_set():
                with lock:
                    manager.tick()
                stop.wait(interval)
        except KeyboardInterrupt:
            console.print("stopped")


def _serve_metrics(port: int) -> tuple[Any, Any]:
    """A registry of its own, served on 127.0.0.1:``port``; the registry and the server."""
    from prometheus_client import CollectorRegistry, start_http_server

    if not 0 < port < 65536:
        raise ValidationError(f"--metrics-port must be within 1..65535, got {port}")
    registry = CollectorRegistry()
    try:
        server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as e:
        raise UnavailableError(
            f"cannot serve metrics on 127.0.0.1:{port}: {e}; pick another --metrics-port"
        ) from e
    console.print(f"metrics on http://127.0.0.1:{port}/metrics")
    return registry, server


@app.command("accelerators")
@friendly
def accelerators(
    ctx: typer.Context,
    seconds: float = typer.Option(3.0, help="sample for this long"),
    alerts: int = typer.Option(10, help="show the last this many utilization alerts"),
) -> None:
    """Each accelerator's utilization now and over the sampled seconds, its memory, and the
    last utilization alerts."""
    from keel.jobs.utilization import open_watch, read_alerts

    if seconds < 0:
        raise ValidationError(f"--seconds must be >= 0, got {seconds:g}")
    proj = project(ctx)
    watch = open_watch(proj.settings.jobs.utilization)
    if watch.state == "no accelerator":
        console.print(f"no accelerator: {escape(str(watch.reason))}")
    else:
        step = min(watch.config.interval_s, 1.0)
        deadline = time.monotonic() + seconds
        try:
            watch.sample()
            while time.monotonic() + step <= deadline:
                time.sleep(step)
                watch.sample()
            series = {s.name: s for s in watch.summary().series if s.kind == "device"}
            devices = watch.devices
        finally:
            watch.close()
        table = Table(title="accelerators", title_justify="left")
        for col in ("device", "now", f"mean over {seconds:g} s", "memory"):
            table.add_column(col, justify="left" if col == "device" else "right")
        for d in devices:
            seen = series.get(str(d.index))  # none when the device reports no utilization
            memory = "—"
            if d.memory_used is not None and d.memory_total:
                memory = f"{human_bytes(d.memory_used)} / {human_bytes(d.memory_total)}"
            table.add_row(
                escape(f"device {d.index} ({d.name})"),
                "—" if seen is None else f"{seen.current:.0%}",
                "—" if seen is None else f"{seen.mean:.0%}",
                memory,
            )
        console.print(table)
    if alerts > 0:
        last = read_alerts(proj.log)[-alerts:]
        if last:
            console.print("[bold]last utilization alerts[/]")
            for a in last:
                console.print(f"  {_when(a.at)} {escape(a.message)}")


def queues(ctx: typer.Context) -> None:
    """Each cluster queue's quota, usage, borrowed and lent, and why jobs wait."""
    from keel.jobs.queues import snapshot
    from keel.jobs.spec import format_quantity

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
        for r in q.resources:
            fmt = functools.partial(format_quantity, r.resource)
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
            waits.add_row(
                escape(j.id),
                escape(j.queue),
                f"{escape(j.priority_class)} ({j.priority})",
                escape(j.reason),
            )
        console.print(waits)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="jobs")
    root.command("queues")(friendly(queues))
