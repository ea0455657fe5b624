"""The ``keel`` command line."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from keel.cli import explain as explain_cli
from keel.cli import features as features_cli
from keel.cli import finetune as finetune_cli
from keel.cli import jobs as jobs_cli
from keel.cli import log as log_cli
from keel.cli import loop as loop_cli
from keel.cli import monitor as monitor_cli
from keel.cli import registry as registry_cli
from keel.cli import serve as serve_cli
from keel.cli import shop as shop_cli
from keel.cli import traffic as traffic_cli
from keel.cli import train as train_cli
from keel.cli import ui as ui_cli
from keel.cli import up as up_cli
from keel.cli._common import console, friendly, project
from keel.config import Settings
from keel.project import init_project

__all__ = ["app", "main"]

app = typer.Typer(
    name="keel",
    help="Keel: an AI-native model platform — log, features, training, registry, serving,"
    " monitoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(log_cli.app, name="log")
app.add_typer(features_cli.app, name="features")
app.add_typer(registry_cli.app, name="registry")
serve_cli.register(app)
traffic_cli.register(app)
monitor_cli.register(app)
train_cli.register(app)
finetune_cli.register(app)
jobs_cli.register(app)
up_cli.register(app)
loop_cli.register(app)
explain_cli.register(app)
shop_cli.register(app)
ui_cli.register(app)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", envvar="KEEL_CONFIG", help="keel.toml to use (default ./keel.toml)"
    ),
) -> None:
    ctx.meta["keel.config"] = config


@app.command("init")
@friendly
def init(
    directory: Path = typer.Argument(..., help="folder to create the project in"),
    name: str | None = typer.Option(None, help="project name (default: the folder's name)"),
    force: bool = typer.Option(False, help="overwrite an existing keel.toml / definitions.py"),
) -> None:
    """Write a working example project: keel.toml and a definitions module."""
    root = init_project(directory, name=name, force=force)
    console.print(f"[green]created[/] {root / 'keel.toml'} and {root / 'definitions.py'}")
    console.print(
        f"next: cd {directory} && keel apply && keel shop generate --days 14 "
        "(sample data: the demo's shop)"
    )


@app.command("apply")
@friendly
def apply(ctx: typer.Context) -> None:
    """Create the declared topics; validate the feature views and record their fingerprints."""
    proj = project(ctx)
    colours = {"created": "green", "changed": "yellow", "unchanged": "dim", "valid": "green"}
    for kind, name, status in proj.apply():
        console.print(f"[{colours[status]}]{status:9s}[/] {kind} {name}")


config_app = typer.Typer(help="Show the resolved configuration.")
app.add_typer(config_app, name="config")


@config_app.command("show")
@friendly
def config_show(ctx: typer.Context) -> None:
    """Print every setting after keel.toml and KEEL_* overrides."""
    settings = project(ctx).settings
    table = Table(title="settings")
    table.add_column("key")
    table.add_column("value")
    table.add_column("env override")
    for field in ("project_dir", *Settings.fields()):
        table.add_row(field, str(getattr(settings, field)), f"KEEL_{field.upper()}")
    console.print(table)


@app.command("demo")
@friendly
def demo(
    days: float = typer.Option(14.0, help="days of shop history to stream into the log"),
    users: int = typer.Option(5_000, help="shop users"),
    items: int = typer.Option(2_000, help="shop items"),
    live_seconds: float = typer.Option(3.0, help="seconds of live stream after the history"),
    keep: Path | None = typer.Option(None, help="create the project here and keep it"),
    seed: int = typer.Option(7, help="random seed of the shop"),
) -> None:
    """Run the end-to-end demo on the embedded defaults, in a fresh example project."""
    from keel.demo import run_demo

    run_demo(
        days=days,
        users=users,
        items=items,
        live_seconds=live_seconds,
        keep=keep,
        seed=seed,
        console=console,
    )


def main() -> None:
    app()
