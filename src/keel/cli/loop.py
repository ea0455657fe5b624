"""``keel controller`` (the closed loop and the traffic decisions, beside a running server)
and ``keel loop ROUTE`` (the loop's causal trail as a timeline; pause and resume)."""

from __future__ import annotations

import threading
from typing import Any

import typer
from rich.tree import Tree

from keel.cli._common import console, friendly, project, span

URL = typer.Option("http://127.0.0.1:8000", "--url", help="the server's address")

#: How each kind of step is shown.
STYLE = {
    "trigger": "red",
    "skipped": "yellow",
    "job": "cyan",
    "job_done": "cyan",
    "candidate": "magenta",
    "decision": "bold",
    "swap": "green",
    "monitoring": "green",
    "closed": "dim",
    "paused": "yellow",
    "resumed": "yellow",
}


def controller(
    ctx: typer.Context,
    url: str = URL,
    interval: float = typer.Option(2.0, help="seconds between evaluations"),
    once: bool = typer.Option(False, help="evaluate once and exit"),
    traffic: bool = typer.Option(
        True,
        help="decide shadows and canaries through the server's API (off when the server "
        "decides them itself, as `keel serve` does)",
    ),
    loop: bool = typer.Option(
        True, help="run the routes' loop policies (their routes.loop blocks)"
    ),
) -> None:
    """Run the closed loop: alerts → jobs → shadows → promotions, by each route's policy;
    and promote converged shadows and roll back failing canaries of a running server."""
    from keel.controller import LoopController, RemoteController

    proj = project(ctx)
    steps: list[Any] = []
    if traffic:
        steps.append(RemoteController(url, proj.registry, interval_s=interval))
    if loop:
        steps.append(LoopController(proj, interval_s=interval))
    if not steps:
        raise typer.BadParameter("nothing to run: drop --no-traffic or --no-loop")
    if once:
        for step in steps:
            for d in step.step():
                console.print(
                    f"{d.route}: {getattr(d, 'action', None) or d.kind} — "
                    f"{getattr(d, 'reason', None) or d.summary}"
                )
        return
    looped = [r.name for r in proj.settings.routes if r.loop is not None]
    console.print(
        f"controller: {'traffic of ' + url if traffic else 'no traffic decisions'}; loops for "
        f"{', '.join(looped) or 'no route'}; every {interval:g} s (Ctrl-C to stop)"
    )
    stop = threading.Event()
    threads = [
        threading.Thread(target=s.run, args=(stop,), name=type(s).__name__, daemon=True)
        for s in steps
    ]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            stop.wait(0.5)
    except KeyboardInterrupt:
        stop.set()


def loop(
    ctx: typer.Context,
    route: str = typer.Argument(..., help="route name"),
    pause: bool = typer.Option(False, help="pause the route's loop (triggers are skipped)"),
    resume: bool = typer.Option(False, help="resume a paused loop"),
    last: int = typer.Option(5, help="show the last N chains"),
) -> None:
    """The route's loop as a timeline: each alert and what it caused (job, version, shadow,
    decision, swap), with the reasons."""
    from keel.controller import loop as loops
    from keel.controller.trail import chains, read

    proj = project(ctx)
    if pause and resume:
        raise typer.BadParameter("give --pause or --resume, not both")
    if pause or resume:
        (loops.pause if pause else loops.resume)(proj, route, by="keel loop")
        console.print(f"route {route}: loop {'paused' if pause else 'resumed'}")
        return
    events = list(read(proj.log, route))
    known = {r.name for r in proj.settings.routes}
    if not events and route not in known:
        from keel.errors import NotFoundError, did_you_mean

        raise NotFoundError(
            f"no route {route!r}{did_you_mean(route, known)}; routes: {', '.join(known) or 'none'}"
        )
    if not events:
        console.print(f"route {route}: the loop has taken no step yet")
        return
    groups = chains(events)
    for chain in groups[-last:]:
        start = chain[0]
        tree = Tree(f"[bold]{start.at:%Y-%m-%d %H:%M:%S}[/] {_line(start)}")
        for e in chain[1:]:
            offset = (e.at - start.at).total_seconds()
            tree.add(f"+{span(offset):>7} {_line(e)}")
        console.print(tree)
    if len(groups) > last:
        console.print(f"[dim]({len(groups) - last} earlier chains; --last N shows more)[/]")


def _line(e: Any) -> str:
    style = STYLE.get(e.kind, "")
    return f"[{style}]{e.kind}[/]: {e.summary}" if style else f"{e.kind}: {e.summary}"


def register(root: typer.Typer) -> None:
    root.command("controller")(friendly(controller))
    root.command("loop")(friendly(loop))
