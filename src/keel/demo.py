"""The end-to-end demo behind ``make demo``: everything Keel does so far, on embedded defaults.

Each capability adds a step here, so the demo always shows the whole loop built so far.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from keel.cli.log import stats_table
from keel.config import CONFIG_FILE
from keel.project import Project, init_project
from keel.shop import EVENTS, Shop

__all__ = ["DemoResult", "run_demo"]

BATCH = 10_000


@dataclass
class DemoResult:
    project_dir: Path
    appended: dict[str, int] = field(default_factory=dict)
    history_seconds: float = 0.0
    live_seconds: float = 0.0
    read_back: int = 0


def run_demo(
    *,
    days: float = 3.0,
    users: int = 5_000,
    items: int = 2_000,
    live_seconds: float = 3.0,
    live_rate: float = 2_000.0,
    keep: Path | None = None,
    seed: int = 7,
    console: Console | None = None,
) -> DemoResult:
    """Create an example project, stream a shop's history and a live feed into its log,
    read it back with a consumer group, and print what the log holds."""
    console = console or Console()
    with ExitStack() as stack:
        if keep is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keel-demo-")))
        else:
            root = Path(keep)
        result = _run(root, days, users, items, live_seconds, live_rate, seed, console)
        if keep is None:
            console.print("[dim](the demo project was temporary; pass --keep DIR to keep it)[/]")
        return result


def _run(
    root: Path,
    days: float,
    users: int,
    items: int,
    live_seconds: float,
    live_rate: float,
    seed: int,
    console: Console,
) -> DemoResult:
    console.rule("[bold]Keel demo[/]")
    init_project(root, name="shop", force=True)
    project = Project.load(root / CONFIG_FILE)
    console.print(f"[bold]1. Project[/] created in {root}")
    applied = project.apply()
    console.print(
        f"   {len(applied)} topics declared in definitions.py, applied to "
        f"[cyan]{project.settings.log_url}[/]"
    )
    log = project.log
    result = DemoResult(project_dir=root)

    now = datetime.now(UTC).replace(microsecond=0)
    shop = Shop(seed=seed, n_users=users, n_items=items, start=now - timedelta(days=days))
    for name, table in shop.catalog().items():
        log.append(name, table)
        result.appended[name] = table.num_rows

    console.print(
        f"[bold]2. History[/]: {days:g} days of a shop with {users:,} users and "
        f"{items:,} items, streamed in time order"
    )
    history = {
        # Labels arrive hours to days after a payment: those not yet known now stay unknown.
        name: table.filter(
            pc.less_equal(table.column("ts"), pa.scalar(now, table.schema.field("ts").type))
        )
        for name, table in shop.history(days=days).items()
    }
    total = sum(t.num_rows for t in history.values())
    start = time.perf_counter()
    with _progress(console) as progress:
        task = progress.add_task("history → log", total=total)
        for chunk in _time_ordered_chunks(history):
            for name, table in chunk.items():
                log.append(name, table)
                result.appended[name] = result.appended.get(name, 0) + table.num_rows
                progress.advance(task, table.num_rows)
    result.history_seconds = time.perf_counter() - start
    console.print(
        f"   {total:,} events in {result.history_seconds:.1f} s "
        f"({total / max(result.history_seconds, 1e-9):,.0f} events/s)"
    )

    if live_seconds > 0:
        console.print(
            f"[bold]3. Live stream[/]: {live_rate:,.0f} events/s for "
            f"{live_seconds:g} s, stamped with the wall clock"
        )
        start = time.perf_counter()
        live = 0
        with _progress(console) as progress:
            task = progress.add_task("live → log", total=int(live_rate * live_seconds))
            for tick in shop.stream(
                rate=live_rate, start=now, realtime=True, tick_s=0.25, duration_s=live_seconds
            ):
                for name, table in tick.items():
                    if table.num_rows:
                        log.append(name, table)
                        result.appended[name] = result.appended.get(name, 0) + table.num_rows
                        if name == EVENTS.name:
                            live += table.num_rows
                            progress.advance(task, table.num_rows)
        result.live_seconds = time.perf_counter() - start
        console.print(f"   {live:,} live shop events in {result.live_seconds:.1f} s")

    console.print("[bold]4. Read back[/] with consumer group [cyan]demo-reader[/]")
    consumer = log.consumer("demo-reader", EVENTS.name)
    start = time.perf_counter()
    result.read_back = sum(batch.num_rows for batch in consumer)
    consumer.commit()
    read_s = time.perf_counter() - start
    expected = result.appended.get(EVENTS.name, 0)
    status = "[green]all there[/]" if result.read_back == expected else "[red]MISMATCH[/]"
    console.print(
        f"   {result.read_back:,} of {expected:,} {EVENTS.name} records in "
        f"{read_s:.2f} s — {status}"
    )
    console.print(stats_table(log))
    _summary(console, project, result)
    return result


def _time_ordered_chunks(history: dict[str, pa.Table]) -> list[dict[str, pa.Table]]:
    """Cut every topic's table at the same event-time boundaries, about BATCH events apart,
    so the topics are appended interleaved, as a live shop would produce them."""
    events = history[EVENTS.name]
    ts = events.column(EVENTS.event_time).cast(pa.int64()).to_numpy()
    cuts = ts[BATCH::BATCH] if len(ts) else np.zeros(0, np.int64)
    bounds = np.concatenate([[np.iinfo(np.int64).min], cuts, [np.iinfo(np.int64).max]])
    chunks: list[dict[str, pa.Table]] = [{} for _ in range(len(bounds) - 1)]
    for name, table in history.items():
        if table.num_rows == 0:
            continue
        t = pc.cast(table.column("ts"), pa.int64()).to_numpy()
        idx = np.searchsorted(t, bounds)
        for i in range(len(bounds) - 1):
            if idx[i + 1] > idx[i]:
                chunks[i][name] = table.slice(idx[i], idx[i + 1] - idx[i])
    return [c for c in chunks if c]


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("   [progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _summary(console: Console, project: Project, result: DemoResult) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("project", str(result.project_dir))
    table.add_row("log", project.settings.log_url)
    for name, n in sorted(result.appended.items()):
        table.add_row(name, f"{n:,} records")
    cfg = result.project_dir / CONFIG_FILE
    table.add_row("try", f"keel -c {cfg} log tail shop.events")
    table.add_row("", f"keel -c {cfg} log describe shop.payments")
    console.print(Panel(table, title="Keel so far", expand=False))
