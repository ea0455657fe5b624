"""``keel shop generate``: sample data for a fresh project — the demo's shop (users, items,
views, carts, purchases, card payments and their fraud labels), its last days up to now,
appended to the project's log in time order."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import typer

from keel.cli._common import console, friendly, project

app = typer.Typer(help="Sample data: the demo's shop, on the project's log.")


@app.command("generate")
@friendly
def generate(
    ctx: typer.Context,
    days: float = typer.Option(14.0, help="days of history, ending now"),
    users: int = typer.Option(3_000, help="users"),
    items: int = typer.Option(200, help="items"),
    seed: int = typer.Option(7, help="the same seed gives the same shop"),
) -> None:
    """Append a reproducible shop's catalogue and its last DAYS of events, payments and
    fraud labels (those known by now) to the log, as the example project's topics declare."""
    from keel.demo.data_steps import append_history, demo_shop, progress_bar

    proj = project(ctx)
    proj.apply()
    now = datetime.now(UTC).replace(microsecond=0)
    shop = demo_shop(seed=seed, users=users, items=items, days=days, now=now)
    started = time.perf_counter()
    with progress_bar(console) as progress:
        task = progress.add_task("shop → log", total=None)
        appended = append_history(
            proj.log,
            shop,
            days=days,
            now=now,
            progress=lambda done, of: progress.update(task, completed=done, total=of),
        )
    for name, n in sorted(appended.items()):
        console.print(f"   {name:<20} {n:>10,} records")
    console.print(
        f"{sum(appended.values()):,} records in {time.perf_counter() - started:.2f} s; next: "
        "keel features backfill, then keel train fraud --alias champion"
    )


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="shop")
