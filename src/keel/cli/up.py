"""``keel up``: the platform as one supervised set; ``keel status``: how it is doing."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from keel.cli._common import console, friendly, project, span
from keel.errors import ValidationError


def up(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="address the server binds"),
    port: int = typer.Option(8000, help="port the server listens on"),
    only: list[str] = typer.Option(
        None,
        "--only",
        help="run only this component (repeatable): server, materializer, "
        "monitor, scheduler, controller, ui",
    ),
    skip: list[str] = typer.Option(None, "--skip", help="leave this component out (repeatable)"),
    seconds: float = typer.Option(0.0, help="stop after this long (0 = until SIGTERM or Ctrl-C)"),
    grace: float = typer.Option(10.0, help="seconds a component has to stop before SIGKILL"),
    ui_port: int | None = typer.Option(
        None, "--ui-port", help="port of the web console (default: the server's port + 1)"
    ),
) -> None:
    """Run the server, materializer, monitor, job scheduler, controller and web console as
    one supervised set: started in order, health-checked, restarted with backoff when they
    exit, stopped together on SIGTERM or Ctrl-C. Logs and state.json go to <data_dir>/up."""
    from keel.supervisor import Supervisor, plan
    from keel.supervisor.plan import run_dir, shown

    if seconds < 0 or grace < 0:
        raise ValidationError(f"--seconds and --grace must be >= 0, got {seconds:g}, {grace:g}")
    proj = project(ctx)
    chosen = plan(
        proj.settings,
        proj.config_path if proj.config_path.is_file() else None,
        host=host,
        port=port,
        only=only or (),
        skip=skip or (),
        ui_port=port + 1 if ui_port is None else ui_port,
    )
    if not chosen.components:
        why = "; ".join(f"{name}: {note}" for name, note in chosen.notes.items())
        raise ValidationError(f"no component to run ({why})")
    folder = run_dir(proj.settings.data_dir)
    table = Table(title=f"keel up: {escape(proj.settings.name)}", title_justify="left")
    for col in ("component", "command", "up when"):
        table.add_column(col, overflow="fold")
    for c in chosen.components:
        table.add_row(c.name, escape(shown(c)), escape(str(c.health)))
    for name, note in chosen.notes.items():
        table.add_row(f"[dim]{name}[/]", f"[dim]not started: {escape(note)}[/]", "")
    console.print(table)
    console.print(f"logs and state in {escape(str(folder))} (SIGTERM or Ctrl-C stops)")
    supervisor = Supervisor(
        chosen.components,
        run_dir=folder,
        log_=proj.log,
        url=chosen.url,
        notes=chosen.notes,
        grace_s=grace,
        on_event=_print_event,
    )
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    timer = threading.Timer(seconds, stop.set) if seconds > 0 else None
    if timer is not None:
        timer.start()
    try:
        supervisor.run(stop)
    finally:
        if timer is not None:
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _close(proj)


def _close(proj: Any) -> None:
    """Close the backends the command opened: the project opens each on first use and keeps
    it (a functools.cached_property), so what is in its __dict__ is what was opened."""
    for name in ("registry", "log"):
        opened = vars(proj).get(name)
        if opened is not None:
            opened.close()


_KIND_STYLE = {
    "healthy": "green",
    "settled": "green",
    "exited": "yellow",
    "restarting": "yellow",
    "crash-loop": "bold red",
    "stopped": "dim",
}


def _print_event(event: Any) -> None:
    style = _KIND_STYLE.get(event.kind, "cyan")
    console.print(f"[{style}]{escape(str(event))}[/]", highlight=False)
    if event.kind == "crash-loop":
        for line in event.payload.get("log_tail", []):
            console.print(f"  {line}", markup=False, highlight=False)


def status(
    ctx: typer.Context,
    url: str | None = typer.Option(
        None, "--url", help="the server to ask (default: the one keel up runs, else :8000)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the status as JSON"),
    alerts: int = typer.Option(5, help="how many of the last alerts to show"),
) -> None:
    """One view of the platform: the components keel up runs, the routes with their serving
    versions, canaries and shadows, the job queues and the last alerts."""
    from keel.supervisor.status import platform_status

    proj = project(ctx)
    try:
        doc = platform_status(proj, url=url, alerts=alerts)
    finally:
        _close(proj)
    if as_json:
        typer.echo(json.dumps(doc.to_builtins(), indent=2))
        return
    _show(doc)


def _show(doc: Any) -> None:
    sup = doc.supervisor
    if sup.running:
        console.print(
            f"[green]keel up[/] runs (pid {sup.pid}, for {span(time.time() - sup.since)})"
            + (f", server {escape(sup.url)}" if sup.url else "")
        )
    else:
        console.print(f"[yellow]keel up[/] {escape(sup.note)}")
    if doc.components or doc.notes:
        table = Table(title="components", title_justify="left")
        for col in ("component", "state", "pid", "uptime", "restarts", "last exit"):
            table.add_column(col, justify="right" if col in ("pid", "restarts") else "left")
        for c in doc.components:
            table.add_row(
                c.name,
                _state(c.state, c.crash_loop),
                "—" if c.pid is None else str(c.pid),
                "—" if c.uptime_s is None else span(c.uptime_s),
                str(c.restarts),
                escape(c.last_exit or "—"),
            )
        for name, note in doc.notes.items():
            table.add_row(f"[dim]{name}[/]", "[dim]not started[/]", "", "", "", escape(note))
        console.print(table)
    routes = Table(title="routes", title_justify="left", caption_justify="left")
    if doc.routes_from == "server":
        routes.caption = escape(doc.routes_note)
    else:
        routes.caption = f"from keel.toml and the registry ({escape(doc.routes_note)})"
    for col in ("route", "model", "serving", "canary", "shadow"):
        routes.add_column(col, overflow="fold")
    for r in doc.routes:
        routes.add_row(
            r.name,
            escape(r.model),
            escape(r.serving or "nothing") + (f" [red]{escape(r.error)}[/]" if r.error else ""),
            _canary(r.canary),
            _shadow(r.shadow),
        )
    console.print(routes)
    queues = Table(title="job queues", title_justify="left")
    for col in ("queue", "cohort", "admitted", "pending", "used / nominal"):
        queues.add_column(col, justify="right" if col in ("admitted", "pending") else "left")
    for q in doc.queues:
        usage = ", ".join(f"{k.split('/', 1)[1]} {v}" for k, v in q.usage.items())
        queues.add_row(
            escape(q.name), escape(q.cohort or "—"), str(q.admitted), str(q.pending), escape(usage)
        )
    console.print(queues)
    for j in doc.waiting:
        console.print(f"  pending {escape(j.id)} ({escape(j.queue)}): {escape(j.reason)}")
    if doc.alerts:
        table = Table(title=f"last {len(doc.alerts)} alerts", title_justify="left")
        for col in ("at (UTC)", "route", "window", "alert"):
            table.add_column(col)
        for a in doc.alerts:
            table.add_row(
                a.at[:19].replace("T", " "),
                escape(a.route),
                "—" if a.window is None else str(a.window),
                escape(a.alert),
            )
        console.print(table)
    else:
        console.print("no alerts")


def _state(state: str, crash_loop: bool) -> str:
    style = {
        "running": "green",
        "starting": "cyan",
        "waiting": "cyan",
        "crash-loop": "bold red",
        "restarting": "yellow",
        "orphaned": "red",
    }.get(state, "dim")
    label = state + (" (crash loop)" if crash_loop and state != "crash-loop" else "")
    return f"[{style}]{label}[/]"


def _canary(c: Any) -> str:
    if c is None:
        return "—"
    text = f"{escape(c.serving or c.model)} {c.percent:g}%"
    if c.requests is not None:
        text += f", {c.requests:,} requests, {c.error_rate or 0:.1%} errors"
    return text


def _shadow(s: Any) -> str:
    if s is None:
        return "—"
    text = escape(s.serving or f"{s.model} (nothing yet)")
    if s.status is not None:
        text += f" {escape(s.status)}, {s.samples or 0:,} comparisons"
        if s.discrepancy is not None:
            text += f", discrepancy {s.discrepancy:.4g}"
    return text


def register(app: typer.Typer) -> None:
    app.command("up")(friendly(up))
    app.command("status")(friendly(status))
