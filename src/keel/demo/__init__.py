"""The end-to-end demo behind ``make demo``: everything Keel does so far, on embedded defaults.

Each capability adds a step, so the demo always shows the whole loop built so far.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from keel.cli.log import stats_table
from keel.config import CONFIG_FILE
from keel.demo.data_steps import (
    append_history,
    demo_shop,
    progress_bar,
    show_features,
    show_lookups,
)
from keel.demo.explain_step import show_explanations
from keel.demo.jobs_step import show_jobs
from keel.demo.loop_step import show_loop
from keel.demo.model_steps import show_registry, show_serving, show_training
from keel.demo.monitor_step import show_monitoring
from keel.demo.recommend_step import show_recommendations
from keel.demo.result import DemoResult
from keel.errors import ValidationError
from keel.project import Project, init_project
from keel.shop import EVENTS

__all__ = ["DemoResult", "run_demo"]

MIN_DAYS = 12.0


def run_demo(
    *,
    days: float = 14.0,
    users: int = 5_000,
    items: int = 2_000,
    live_seconds: float = 3.0,
    live_rate: float = 2_000.0,
    keep: Path | None = None,
    seed: int = 7,
    console: Console | None = None,
    quick: bool = False,
) -> DemoResult:
    """Create an example project and run everything Keel does on it, end to end: the log,
    features online and offline, the registry, and serving. ``quick`` shortens the
    load tests (for the test suite)."""
    if days < MIN_DAYS:
        raise ValidationError(
            f"the demo needs at least {MIN_DAYS:g} days of history (got {days:g}): the fraud "
            "model's windows warm up for 7 days, its labels settle for 3 and it is evaluated "
            "on the day before"
        )
    console = console or Console()
    with ExitStack() as stack:
        if keep is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keel-demo-")))
        else:
            root = Path(keep)
        result = _run(root, days, users, items, live_seconds, live_rate, seed, console, quick)
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
    quick: bool,
) -> DemoResult:
    console.rule("[bold]Keel demo[/]")
    init_project(root, name="shop", force=True)
    project = Project.load(root / CONFIG_FILE)
    console.print(f"[bold]1. Project[/] created in {root}")
    applied = [name for kind, name, _ in project.apply() if kind == "topic"]
    console.print(
        f"   {len(applied)} topics declared in definitions.py, applied to "
        f"[cyan]{project.settings.log_url}[/]"
    )
    log = project.log
    result = DemoResult(project_dir=root)

    now = datetime.now(UTC).replace(microsecond=0)
    shop = demo_shop(seed=seed, users=users, items=items, days=days, now=now)
    console.print(
        f"[bold]2. History[/]: {days:g} days of a shop with {users:,} users and "
        f"{items:,} items, streamed in time order"
    )
    start = time.perf_counter()
    landed = {"total": 0}
    with progress_bar(console) as progress:
        task = progress.add_task("history → log", total=None)

        def advance(done: int, of: int) -> None:
            progress.update(task, completed=done, total=of)
            landed["total"] = of

        result.appended = append_history(log, shop, days=days, now=now, progress=advance)
    total = landed["total"]
    result.history_seconds = time.perf_counter() - start
    console.print(
        f"   {total:,} events in {result.history_seconds:.1f} s "
        f"({total / max(result.history_seconds, 1e-9):,.0f} events/s)"
    )

    features = show_features(console, project, result)

    if live_seconds > 0:
        console.print(
            f"[bold]4. Live stream[/]: {live_rate:,.0f} events/s for {live_seconds:g} s, "
            "stamped with the wall clock; the materializer follows every tick"
        )
        start = time.perf_counter()
        live = 0
        with progress_bar(console) as progress:
            task = progress.add_task("live → log → online", total=int(live_rate * live_seconds))
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
                features.materialize()
        result.live_seconds = time.perf_counter() - start
        lag = {
            v.name: log.stats(v.source.topic).lag.get(f"keel-features.{v.name}", 0)
            for v in features.views
        }
        console.print(
            f"   {live:,} live shop events in {result.live_seconds:.1f} s; online "
            f"lag now {max(lag.values(), default=0):,} events"
        )

    console.print("[bold]5. Read back[/] with consumer group [cyan]demo-reader[/]")
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
    show_lookups(console, features, result)
    trained = show_training(console, project, result)
    show_registry(console, project, trained, result)
    show_serving(console, project, result, quick=quick)
    drifted = show_monitoring(console, project, shop, result, days=days, quick=quick)
    show_recommendations(console, project, shop, result, quick=quick)
    show_jobs(console, project, result)
    if drifted is not None:
        show_loop(console, project, drifted, result, days=days, quick=quick)
    show_explanations(console, project, result)
    _summary(console, project, result)
    return result


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
    table.add_row("", f"keel -c {cfg} features get card_payments -k <card>")
    if result.model_ref:
        table.add_row(
            "model",
            f"{result.model_ref}: holdout AUC {result.holdout_auc:.3f}; training set "
            f"reproducible: {'yes' if result.reproduced else 'no'}; model byte-identical: "
            f"{'yes' if result.model_identical else 'no'}; "
            f"champion now {result.promoted_to or result.swapped_to or result.model_ref}",
        )
        table.add_row("serve", f"keel -c {cfg} serve   (routes embed, fraud; /metrics)")
        table.add_row("", f"keel -c {cfg} bench fraud")
        table.add_row("", f"keel -c {cfg} registry lineage fraud@champion")
        table.add_row("", f"keel -c {cfg} train fraud --shadow")
        table.add_row("", f"keel -c {cfg} registry reproduce fraud@1 --model")
    if result.report:
        drifted = ", ".join(f.split("__")[-1] for f in result.drifted_after[:5])
        more = len(result.drifted_after) - 5
        table.add_row(
            "monitor",
            f"{result.monitor_windows} windows; after the drift: {drifted or 'nothing'}"
            + (f" and {more} more" if more > 0 else "")
            + ("; performance alert" if result.performance_alert_after else ""),
        )
        table.add_row("", f"report {result.report}")
        table.add_row("", f"keel -c {cfg} monitor status fraud")
    if result.recommend_quality:
        q = result.recommend_quality
        table.add_row(
            "recommend",
            f"hit rate@10 on the next hour: frozen {q['frozen']:.3f}, fine-tuned "
            f"{q['fine-tuned']:.3f}, retrained {q['retrained']:.3f}; decisions "
            f"{', '.join(result.recommend_decisions) or 'none'}; champion now "
            f"{result.recommend_champion}",
        )
        table.add_row("", f"keel -c {cfg} fine-tune recommend --every 30m")
    if result.jobs_states:
        states = ", ".join(f"{k} {v}" for k, v in result.jobs_states.items())
        table.add_row(
            "jobs",
            f"{states}; the retrain preempted {result.jobs_preemptions}× and resumed to "
            + ("the same bytes" if result.jobs_resumed_identical else "different bytes")
            + f" ({result.jobs_seconds:.0f} s)",
        )
        table.add_row("", f"keel -c {cfg} queues")
        table.add_row("", f"keel -c {cfg} jobs submit retrain fraud --wait")
    if result.explain_version:
        ms = result.explain_ms
        line = (
            f"{result.explain_version} explained exactly (TreeSHAP) in {ms['tree']:.2f} ms a "
            f"payment, {ms['tree'] / ms['predict']:.1f}× predict"
        )
        if result.surrogate_model:
            line += f"; surrogate {result.surrogate_model} R² {result.surrogate_r2:.3f}"
        table.add_row("explain", line)
        table.add_row("", f"keel -c {cfg} explain fraud --row '{{\"card_id\": 1, ...}}'")
    table.add_row(
        "console",
        "routes, lineage graphs, shadows converging, drift over time, queues and the loop's "
        "trail in a browser (http://127.0.0.1:8001)",
    )
    table.add_row("", f"keel -c {cfg} ui")
    console.print(Panel(table, title="Keel so far", expand=False))
