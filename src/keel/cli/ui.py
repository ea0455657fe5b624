"""``keel ui``: the web console — what the platform is doing, and an operator's actions."""

from __future__ import annotations

import typer

from keel.cli._common import console, friendly, project
from keel.errors import ValidationError


def ui(
    ctx: typer.Context,
    host: str = typer.Option(
        "127.0.0.1", help="address to bind (the console is for this machine by default)"
    ),
    port: int = typer.Option(8001, help="port"),
    server_url: str | None = typer.Option(
        None,
        "--server-url",
        help="the server to ask about routes and metrics, and to tell of decisions (default: "
        "the one keel up runs, else http://127.0.0.1:8000)",
    ),
    refresh: float = typer.Option(5.0, help="seconds between refreshes of live parts"),
) -> None:
    """Serve the web console: overview, routes, models and lineage, features, monitoring,
    jobs, the loop and explanations, live; promote, reject, roll back and pause with an
    operator token."""
    import uvicorn

    from keel.ui import create_app

    if not 0 < port < 65536:
        raise ValidationError(f"--port must be within 1..65535, got {port}")
    if refresh <= 0:
        raise ValidationError(f"--refresh must be positive, got {refresh:g}")
    proj = project(ctx)
    app = create_app(proj, server_url=server_url, refresh_s=refresh)
    state = app.state.console
    console.print(f"keel ui on http://{host}:{port} (server {state.server_url})")
    if not state.sessions.enabled:
        console.print(
            "[yellow]no \\[auth] tokens: pages are open to read and nobody may act[/] "
            "(keel token new NAME --role operator makes one)"
        )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def register(root: typer.Typer) -> None:
    root.command("ui")(friendly(ui))
