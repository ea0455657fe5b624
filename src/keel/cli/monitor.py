"""``keel monitor``: watch served routes' prediction logs; ``status`` and ``report``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from keel.cli._common import console, friendly, project
from keel.errors import NotFoundError, ValidationError, did_you_mean

app = typer.Typer(
    help="Watch what served models see and say: drift, estimated performance, staleness, skew.",
    invoke_without_command=True,
)


def _routes(proj: Any, names: list[str] | None) -> list[Any]:
    routes = {r.name: r for r in proj.settings.routes}
    if names:
        for name in names:
            if name not in routes:
                raise NotFoundError(
                    f"no route {name!r} in keel.toml{did_you_mean(name, routes)}; routes: "
                    f"{', '.join(routes) or 'none'}"
                )
        return [routes[n] for n in names]
    chosen = [r for r in routes.values() if r.monitor is not None]
    if not chosen:
        raise ValidationError(
            "no route has a [routes.monitor] block in keel.toml: add one (e.g. "
            'monitor = {sample = 1.0, id = "payment_id"}) and serve the route'
        )
    return chosen


def _monitor(proj: Any, route: Any, metrics: Any = None) -> Any:
    from keel.monitoring import Monitor

    return Monitor(
        route,
        log_=proj.log,
        registry=proj.registry,
        features=proj.features,
        metrics=metrics,
    )


@app.callback()
@friendly
def run(
    ctx: typer.Context,
    route: list[str] | None = typer.Option(
        None, "--route", "-r", help="route to watch (repeatable; default: every monitored one)"
    ),
    once: bool = typer.Option(False, help="score the complete windows logged so far, then exit"),
    interval: float = typer.Option(5.0, help="seconds between looks at the prediction log"),
    metrics_port: int | None = typer.Option(
        None, help="serve the monitor's Prometheus gauges on this port"
    ),
) -> None:
    """Score each route's prediction log in windows against its model's training set."""
    if ctx.invoked_subcommand is not None:
        return
    proj = project(ctx)
    metrics = None
    if metrics_port is not None:
        from prometheus_client import CollectorRegistry, start_http_server

        metrics = CollectorRegistry()
        start_http_server(metrics_port, registry=metrics)
        console.print(f"gauges on http://127.0.0.1:{metrics_port}/metrics")
    monitors = [_monitor(proj, r, metrics) for r in _routes(proj, route)]
    waiting: set[str] = set()
    stop = threading.Event()
    try:
        while True:
            for m in monitors:
                try:
                    if m.reference_ is None:
                        with console.status(f"{m.route.name}: building the reference…"):
                            m.fit()
                        _describe(m)
                    for record in m.step():
                        console.print(_line(record))
                except NotFoundError as exc:  # nothing logged yet: a job waits for it
                    if once:
                        raise
                    if m.route.name not in waiting:
                        console.print(f"[yellow]{m.route.name}[/]: {exc}; waiting")
                        waiting.add(m.route.name)
            if once:
                return
            stop.wait(interval)
    except KeyboardInterrupt:
        console.print("stopped")


def _describe(m: Any) -> None:
    ref = m.reference_
    source = (
        f"its first {ref.rows:,} logged predictions"
        if m.config.reference_rows
        else f"{ref.version}'s training set, {ref.rows:,} rows"
    )
    console.print(
        f"[bold]{m.route.name}[/]: reference {source}, {len(ref.features)} inputs and "
        f"{len(ref.outputs)} outputs watched; windows of {m.config.window_rows:,} predictions"
        + (f", from window {m.windows_}" if m.windows_ else "")
    )


def _line(record: dict[str, Any]) -> str:
    perf = record["performance"]
    est = (
        ""
        if perf is None
        else f" est. {perf['metric']} {perf['estimated']:.3f} (alert > {perf['threshold']:.3f})"
    )
    alerts = record["alerts"]
    verdict = "[green]ok[/]" if not alerts else "[red]" + ", ".join(alerts) + "[/]"
    return (
        f"  {record['route']} window {record['window']}: {record['rows']:,} rows "
        f"{record['start'][:19]} → {record['end'][11:19]}{est} — {verdict}"
    )


@app.command("status")
@friendly
def status(
    ctx: typer.Context,
    route: str = typer.Argument(..., help="route name"),
    last: int = typer.Option(10, help="how many recent windows"),
) -> None:
    """The route's recent windows: drifted features, estimated and realized performance."""
    from keel.monitoring import history

    proj = project(ctx)
    _routes(proj, [route])
    windows = history(proj.log, route)[-last:]
    if not windows:
        raise NotFoundError(f"route {route!r} has no monitored windows yet: run `keel monitor`")
    table = Table(
        title=f"{route}: the last {len(windows)} monitored windows",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for col in ("window", "end (UTC)", "rows", "output", "estimated", "realized"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("drifted features (times their level)", ratio=1)
    for w in windows:
        perf = w["performance"] or {}
        pred = w["prediction"]
        table.add_row(
            str(w["window"]),
            w["end"][5:16].replace("T", " "),
            f"{w['rows']:,}",
            "—" if pred is None else ("[red]drifted[/]" if pred["drifted"] else "ok"),
            "—"
            if not perf
            else ("[red]" if perf["alert"] else "")
            + f"{perf['estimated']:.4f}"
            + (" alert[/]" if perf["alert"] else ""),
            "—" if perf.get("realized") is None else f"{perf['realized']:.4f}",
            drift_cell(w["features"]),
        )
    console.print(table)


def drift_cell(features: list[dict], most: int = 3) -> str:
    """How many features drifted, and the furthest over their level (short names, how many
    times their level; a feature missing from the window counts as furthest)."""
    from keel.monitoring import times_level

    drifted = [f for f in features if f["drifted"]]
    if not drifted:
        return f"0/{len(features)}"
    top = sorted(drifted, key=times_level, reverse=True)[:most]
    # A name and its ratio never part at a line break (a no-break space between them).
    named = ", ".join(
        f"{f['feature'].split('__')[-1]}\u00a0"
        + ("missing" if f["value"] is None else f"{times_level(f):.1f}×")
        for f in top
    )
    more = f", +{len(drifted) - most}" if len(drifted) > most else ""
    return f"[red]{len(drifted)}/{len(features)}[/]: {named}{more}"


@app.command("report")
@friendly
def report(
    ctx: typer.Context,
    route: str = typer.Argument(..., help="route name"),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="where to write it (default: <data_dir>/reports/<route>.html)"
    ),
) -> None:
    """Write an HTML report: distributions, statistics over time with their alert levels,
    estimated versus realized performance, staleness and skew."""
    proj = project(ctx)
    (cfg,) = _routes(proj, [route])
    monitor = _monitor(proj, cfg)
    path = output or Path(proj.settings.data_dir) / "reports" / f"{route}.html"
    with console.status("rendering the report…"):
        written = monitor.report(path)
    console.print(f"[green]wrote[/] {written}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="monitor")
