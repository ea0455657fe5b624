"""``keel traffic``: canaries and shadows, changed while serving; an operator's decisions
(promote, reject, roll back), taken by hand."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from keel.cli._common import console, friendly, project
from keel.serving.client import call

app = typer.Typer(help="Canary splits and shadow comparisons of a running server.")

URL = typer.Option("http://127.0.0.1:8000", "--url", help="the server's address")


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def _steps(text: str) -> list[float]:
    """``5,25,50,100`` → the ramp's percents (the server checks the ramp itself)."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"--steps takes percents separated by commas, e.g. 5,25,50,100; got {text!r}"
        ) from None


@app.command("set")
@friendly
def set_traffic(
    route: str = typer.Argument(..., help="route name"),
    canary: str | None = typer.Option(None, help="canary model, name@alias"),
    percent: float | None = typer.Option(
        None, help="canary share of entities, 0..100 (default 10, or the ramp's first step)"
    ),
    steps: str | None = typer.Option(
        None, help="a canary ramp, percents ending at 100: 5,25,50,100"
    ),
    step_requests: int | None = typer.Option(
        None, help="fewest canary requests at a ramp's step before it advances"
    ),
    step_time: str | None = typer.Option(
        None, help="least time at a ramp's step before it advances (30s, 10m, 1h)"
    ),
    shadow: str | None = typer.Option(None, help="shadow model, name@alias"),
    sample: float = typer.Option(1.0, help="share of requests copied to the shadow"),
    compare: str = typer.Option("abs", help="abs, rel, agreement, topk or cosine"),
    tolerance: float = typer.Option(0.05, help="largest acceptable mean discrepancy"),
    window: str = typer.Option("24h", help="how long to compare before promoting"),
    min_samples: int = typer.Option(200, help="fewest comparisons before deciding"),
    clear_canary: bool = typer.Option(False, help="remove the canary"),
    clear_shadow: bool = typer.Option(False, help="remove the shadow"),
    url: str = URL,
) -> None:
    """Change a route's canary and/or shadow, without a restart."""
    body: dict[str, Any] = {}
    if clear_canary:
        body["canary"] = None
    elif canary is not None:
        body["canary"] = {"model": canary}
        if percent is not None:
            body["canary"]["percent"] = percent
        if steps is not None:
            body["canary"]["steps"] = _steps(steps)
        if step_requests is not None:
            body["canary"]["step_requests"] = step_requests
        if step_time is not None:
            body["canary"]["step_s"] = _duration(step_time)
    if clear_shadow:
        body["shadow"] = None
    elif shadow is not None:
        body["shadow"] = {
            "model": shadow,
            "sample": sample,
            "compare": compare,
            "tolerance": tolerance,
            "window_s": _duration(window),
            "min_samples": min_samples,
        }
    if not body:
        raise typer.BadParameter("give --canary, --shadow, --clear-canary or --clear-shadow")
    _show(call(url, f"/v1/routes/{route}/traffic", body))


@app.command("status")
@friendly
def status(route: str = typer.Argument(..., help="route name"), url: str = URL) -> None:
    """The live split, the shadow comparison so far and the last decisions."""
    _show(call(url, f"/v1/routes/{route}/traffic"))


def _show(doc: dict[str, Any]) -> None:
    table = Table(title=f"traffic of route {doc['route']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    canary = doc.get("canary")
    share = 0.0 if not canary else canary["percent"]
    table.add_row("primary", f"{doc['primary']} ({100 - share:g}% of entities)")
    if canary:
        table.add_row(
            "canary",
            f"{canary['serving'] or canary['model']} ({share:g}%): "
            f"{canary['requests']:,} requests, errors "
            f"{canary['error_rate']:.2%}, p99 {canary['p99_ms']:.1f} ms",
        )
        if canary.get("steps"):
            table.add_row("ramp", _ramp(canary))
    shadow = doc.get("shadow")
    if shadow:
        ci = shadow["ci95"]
        table.add_row(
            "shadow",
            f"{shadow['candidate']} ({shadow['status']}): "
            f"{shadow['samples']:,} comparisons ({shadow['compare']})",
        )
        if shadow["discrepancy"] is not None:
            table.add_row(
                "",
                f"discrepancy {shadow['discrepancy']:.4g}"
                + (f", 95% CI {ci[0]:.4g}–{ci[1]:.4g}" if ci else "")
                + f" (tolerance {shadow['tolerance']:g})",
            )
        table.add_row(
            "",
            f"{shadow['elapsed_s']:,.0f} of {shadow['window_s']:,.0f} s; "
            f"latency ratio {shadow['latency_ratio'] or 0:.2f}; candidate errors "
            f"{shadow['candidate_error_rate']:.2%}",
        )
    if doc.get("settings") == "runtime":
        table.add_row("settings", "set at runtime: kept over keel.toml's until those change")
    for d in doc.get("decisions", []):
        table.add_row("decision", f"{d['at'][:19]} {d['action']}: {d['reason']}")
    console.print(table)


YES = typer.Option(False, "--yes", "-y", help="do not ask for confirmation")


def _decide(ctx: typer.Context, route: str, action: str, yes: bool, url: str) -> None:
    """What ``action`` would do, confirmed, then done as this user: the console's rules
    (:mod:`keel.controller.operator`)."""
    import getpass

    from keel.controller.operator import carry_out, propose

    proj = project(ctx)
    proposal = propose(proj, route, action)
    console.print(proposal.summary)
    if not yes and not typer.confirm(f"{action} on route {route}?"):
        raise typer.Exit(1)
    decision = carry_out(proj, proposal, by=f"{getpass.getuser()} (keel traffic)", url=url)
    console.print(f"[green]{decision['reason']}[/]")


@app.command("promote")
@friendly
def promote(
    ctx: typer.Context,
    route: str = typer.Argument(..., help="route name"),
    yes: bool = YES,
    url: str = URL,
) -> None:
    """Promote the candidate the route's shadow compares: the route's alias moves to it."""
    _decide(ctx, route, "promote", yes, url)


@app.command("reject")
@friendly
def reject(
    ctx: typer.Context,
    route: str = typer.Argument(..., help="route name"),
    yes: bool = YES,
    url: str = URL,
) -> None:
    """Reject the candidate the route's shadow compares: it stops being compared."""
    _decide(ctx, route, "reject", yes, url)


@app.command("rollback")
@friendly
def rollback(
    ctx: typer.Context,
    route: str = typer.Argument(..., help="route name"),
    yes: bool = YES,
    url: str = URL,
) -> None:
    """Roll the route back to the version it served before its alias last moved."""
    _decide(ctx, route, "rollback", yes, url)


def _ramp(canary: dict[str, Any]) -> str:
    """The steps, the current one in bold, and how far this step's evidence has come."""
    steps, step = canary["steps"], canary["step"]
    path = " → ".join(
        f"[bold]{p:g}%[/]" if i == step else f"{p:g}%" for i, p in enumerate(steps, start=1)
    )
    if step is None:
        return f"{path}: rolled back"
    progress = f"{canary['requests']:,} of {canary['step_requests']:,} requests"
    if canary["step_s"]:
        progress += f", {canary['elapsed_s']:,.0f} of {canary['step_s']:,.0f} s"
    return f"{path} (step {step} of {len(steps)}; {progress} at this step)"


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="traffic")
